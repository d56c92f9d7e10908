"""What a decoder checkpoint is, read once from config.json: sizes, heads, norms, rotary tables.

One entry per family in ``FAMILIES`` (the ``architectures`` name in config.json); what differs between
families (Qwen2's q/k/v biases, Qwen3's q/k norms, Phi-3's fused projections, Gemma's norms, GeGLU,
soft-caps and sliding-window layers) is a field here, so the graph builder reads top to bottom without
family branches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import SourceError

# config.json "architectures" -> family; the same families the GGUF converter writes
FAMILIES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3",
            "Phi3ForCausalLM": "phi3", "GemmaForCausalLM": "gemma", "Gemma2ForCausalLM": "gemma2",
            "Gemma3ForCausalLM": "gemma3"}
GEMMA = ("gemma", "gemma2", "gemma3")
GELU_NAMES = ("gelu_pytorch_tanh", "gelu_tanh", "gelu")  # Gemma computes all three with the tanh approximation


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
    act: str = "silu"  # the gated FFN's activation: silu (SwiGLU) or gelu_tanh (GeGLU)
    qk_norm: bool = False  # an RMSNorm over each head's q and k before the rotation (Qwen3, Gemma 3)
    post_norms: bool = False  # an RMSNorm on the attention and FFN outputs before each residual (Gemma 2/3)
    norm_offset: float = 0.0  # Gemma keeps RMSNorm weights as w and multiplies by 1 + w
    embed_scale: float = 1.0  # Gemma: token embeddings times sqrt(hidden)
    attn_scale: float = 0.0  # softmax scale: 1/sqrt(head_dim), Gemma 2/3 query_pre_attn_scalar ** -0.5
    attn_softcap: float = 0.0  # Gemma 2: scores -> cap * tanh(scores / cap)
    final_softcap: float = 0.0  # Gemma 2: logits -> cap * tanh(logits / cap)
    sliding_window: int = 0  # keys at most this many positions back, on the layers flagged in sliding_layers
    sliding_layers: tuple[bool, ...] = ()
    rope_theta_local: float = 0.0  # Gemma 3: the sliding layers' rotary base (0: the global one)
    fused_projections: bool = False  # Phi-3: qkv_proj and gate_up_proj stored as one matrix each

    @property
    def pre_ffn_norm(self) -> str:
        """The norm before the FFN: Gemma 2/3 call it pre_feedforward_layernorm (their post_attention_layernorm
        is the attention output's post-norm)."""
        return "pre_feedforward_layernorm" if self.post_norms else "post_attention_layernorm"

    def sliding(self, layer: int) -> bool:
        return bool(self.sliding_window) and bool(self.sliding_layers) and self.sliding_layers[layer]

    def rotary_caches(self, theta: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """cos and sin, ``[context_length, head_dim / 2]`` float32: the tables GroupQueryAttention's
        ``do_rotary`` indexes by position (the half-split "rotate_half" layout Llama and Qwen2 use).
        ``theta``: another base (Gemma 3's sliding layers), unscaled."""
        factor = self.rope_linear_factor if theta is None else 1.0
        theta = self.rope_theta if theta is None else theta
        inv_freq = 1.0 / (theta ** (np.arange(0, self.head_dim, 2, dtype=np.float64) / self.head_dim))
        pos = np.arange(self.context_length, dtype=np.float64) / factor
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
    gemma = family in GEMMA
    act = config.get("hidden_activation") or config.get("hidden_act") or ("gelu_pytorch_tanh" if gemma else "silu")
    if act != "silu" and not (gemma and act in GELU_NAMES):
        raise SourceError(f"config.json: hidden_act '{act}' is not supported (the graph computes SwiGLU with silu, "
                          "or Gemma's GeGLU)")
    hidden, n_head = _int(config, "hidden_size"), _int(config, "num_attention_heads", hi=4096)
    n_kv = _int(config, "num_key_value_heads", hi=4096) if config.get("num_key_value_heads") is not None else n_head
    head_dim = config.get("head_dim") or hidden // n_head
    if n_head % n_kv or head_dim % 2 or not isinstance(head_dim, int):
        raise SourceError(f"config.json: {n_head} attention heads over {n_kv} key/value heads of size {head_dim} "
                          "cannot form grouped-query attention")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    local_rope = rope.get("sliding_attention") or {}
    rope = rope.get("full_attention") or rope  # Gemma 3 (transformers 5): one entry per layer type
    if "full_attention" not in (config.get("rope_parameters") or {}) and family == "gemma3":
        rope = config.get("rope_scaling") or {}
    theta = config.get("rope_theta") or rope.get("rope_theta") or (1_000_000.0 if family == "gemma3" else 10000.0)
    partial = float(config.get("partial_rotary_factor") or rope.get("partial_rotary_factor") or 1.0)
    if partial != 1.0:
        raise SourceError(f"config.json: partial_rotary_factor {partial} is not supported yet (the rotary tables "
                          "cover whole heads)")
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
    n_layer = _int(config, "num_hidden_layers", hi=1024)
    window = int(config.get("sliding_window") or 0) if family in ("phi3", "gemma2", "gemma3") else 0
    types = config.get("layer_types")
    if family == "phi3" or not window:
        sliding = (bool(window),) * n_layer
    elif types:
        sliding = tuple(t == "sliding_attention" for t in types)
    else:  # older configs: Gemma 2 alternates (even layers local), Gemma 3 has one global layer in six
        every = int(config.get("sliding_window_pattern") or (2 if family == "gemma2" else 6))
        sliding = tuple(i % every < every - 1 for i in range(n_layer))
    if len(sliding) != n_layer:
        raise SourceError(f"config.json: layer_types lists {len(sliding)} layers for {n_layer}")
    scalar = config.get("query_pre_attn_scalar") if family in ("gemma2", "gemma3") else None
    caps = (config.get("attn_logit_softcapping") or 0.0, config.get("final_logit_softcapping") or 0.0)
    tied = bool(config.get("tie_word_embeddings", gemma))
    return DecoderSpec(family, n_layer, hidden, n_head, n_kv, int(head_dim),
                       _int(config, "intermediate_size"), _int(config, "vocab_size"),
                       float(config.get("rms_norm_eps", 1e-6)), float(theta), factor, int(ctx),
                       tied, bias, config.get("bos_token_id"), eos_ids,
                       act="gelu_tanh" if gemma else "silu", qk_norm=family in ("qwen3", "gemma3"),
                       post_norms=family in ("gemma2", "gemma3"), norm_offset=1.0 if gemma else 0.0,
                       embed_scale=float(np.sqrt(hidden)) if gemma else 1.0,
                       attn_scale=float((scalar or head_dim) ** -0.5), attn_softcap=float(caps[0]),
                       final_softcap=float(caps[1]), sliding_window=window, sliding_layers=sliding,
                       rope_theta_local=float(local_rope.get("rope_theta") or config.get("rope_local_base_freq")
                                              or 10000.0) if family == "gemma3" else 0.0,
                       fused_projections=family == "phi3")
