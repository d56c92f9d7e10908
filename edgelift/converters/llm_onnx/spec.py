"""What a decoder checkpoint is, read once from config.json: sizes, heads, norms, rotary tables.

One entry per family in ``FAMILIES`` (the ``architectures`` name in config.json); what differs between
families (Qwen2's q/k/v biases) is a field here, so the graph builder reads top to bottom without
family branches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import SourceError

# config.json "architectures" -> family; the same families the GGUF converter writes
FAMILIES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}


@dataclass(frozen=True)
class DecoderSpec:
    family: str
    n_layer: int
    hidden: int
    n_head: int
    n_kv_head: int
    head_dim: int
    ffn: int
    vocab: int
    rms_eps: float
    rope_theta: float
    rope_linear_factor: float  # positions divided by it ("linear" rope scaling); 1.0 when unscaled
    context_length: int
    tied_embeddings: bool
    qkv_bias: bool
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]

    def rotary_caches(self) -> tuple[np.ndarray, np.ndarray]:
        """cos and sin, ``[context_length, head_dim / 2]`` float32: the tables GroupQueryAttention's
        ``do_rotary`` indexes by position (the half-split "rotate_half" layout Llama and Qwen2 use)."""
        inv_freq = 1.0 / (self.rope_theta ** (np.arange(0, self.head_dim, 2, dtype=np.float64) / self.head_dim))
        pos = np.arange(self.context_length, dtype=np.float64) / self.rope_linear_factor
        angles = np.outer(pos, inv_freq)
        return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def _int(cfg: dict, key: str, lo: int = 1, hi: int = 1 << 24) -> int:
    v = cfg.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise SourceError(f"config.json: {key} is {v!r}; expected an integer in [{lo}, {hi}]")
    return v


def decoder_spec(config: dict) -> DecoderSpec:
    """The decoder's shape from its config.json; anything the graph would get wrong is refused by name."""
    archs = config.get("architectures") or [config.get("model_type", "?")]
    family = FAMILIES.get(archs[0])
    if family is None:
        raise SourceError(f"'{archs[0]}' checkpoints do not convert to ONNX language-model graphs yet; supported: "
                          f"{', '.join(FAMILIES)} (use --to gguf for the other families llama.cpp knows)")
    act = config.get("hidden_act", "silu")
    if act != "silu":
        raise SourceError(f"config.json: hidden_act '{act}' is not supported (the graph computes SwiGLU with silu)")
    hidden, n_head = _int(config, "hidden_size"), _int(config, "num_attention_heads", hi=4096)
    n_kv = _int(config, "num_key_value_heads", hi=4096) if config.get("num_key_value_heads") is not None else n_head
    head_dim = config.get("head_dim") or hidden // n_head
    if n_head % n_kv or head_dim % 2 or not isinstance(head_dim, int):
        raise SourceError(f"config.json: {n_head} attention heads over {n_kv} key/value heads of size {head_dim} "
                          "cannot form grouped-query attention")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    theta = config.get("rope_theta") or rope.get("rope_theta") or 10000.0
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in ("default", "linear", None):
        raise SourceError(f"config.json: rope scaling '{kind}' is not supported yet (default and linear are)")
    factor = float(rope.get("factor", 1.0)) if kind == "linear" else 1.0
    bias = bool(config.get("attention_bias", family == "qwen2"))
    if config.get("mlp_bias"):
        raise SourceError("config.json: mlp_bias is set; the graph's feed-forward has no biases")
    eos = config.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
    ctx = config.get("max_position_embeddings") or 2048
    return DecoderSpec(family, _int(config, "num_hidden_layers", hi=1024), hidden, n_head, n_kv, int(head_dim),
                       _int(config, "intermediate_size"), _int(config, "vocab_size"),
                       float(config.get("rms_norm_eps", 1e-6)), float(theta), factor, int(ctx),
                       bool(config.get("tie_word_embeddings", False)), bias, config.get("bos_token_id"), eos_ids)
