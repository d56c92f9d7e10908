"""Architecture units for Hugging Face -> GGUF: hyperparameter keys, tensor names, tensor transforms.

One small class per architecture family, registered by the ``architectures`` name in config.json;
names map through gguf's ``TensorNameMap`` (llama.cpp's own table), so a new architecture is a
subclass saying what differs.
"""

from __future__ import annotations

import numpy as np

from ...errors import SourceError
from .checkpoint import HFCheckpoint

ARCHITECTURES: dict[str, "ArchUnit"] = {}


def register_arch(*hf_names: str):
    def deco(cls):
        for n in hf_names:
            ARCHITECTURES[n] = cls()
        return cls

    return deco


def _first(cfg: dict, *keys: str, default=None):
    for k in keys:
        if k in cfg and cfg[k] is not None:
            return cfg[k]
    return default


class ArchUnit:
    gguf_arch: str = ""  # gguf.MODEL_ARCH member name
    skip_suffixes: tuple[str, ...] = (".rotary_emb.inv_freq", ".attention.masked_bias", ".attention.bias")

    def arch(self):
        import gguf

        return getattr(gguf.MODEL_ARCH, self.gguf_arch)

    def arch_name(self) -> str:
        import gguf

        return gguf.MODEL_ARCH_NAMES[self.arch()]

    def write_hparams(self, w, cfg: dict, ckpt: HFCheckpoint) -> None:
        """The keys every transformer writes (llama.cpp's TextModel): sizes, heads, norms, rope base."""
        w.add_block_count(int(_first(cfg, "num_hidden_layers", "n_layer", "num_layers")))
        ctx = _first(cfg, "max_position_embeddings", "n_positions", "n_ctx")
        if ctx is not None:
            w.add_context_length(int(ctx))
        w.add_embedding_length(int(_first(cfg, "hidden_size", "n_embd", "dim")))
        w.add_feed_forward_length(int(_first(cfg, "intermediate_size", "n_inner")))
        w.add_head_count(int(_first(cfg, "num_attention_heads", "n_head")))
        kv = _first(cfg, "num_key_value_heads")
        if kv is not None:
            w.add_head_count_kv(int(kv))
        theta = _first(cfg, "rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta")
        if theta is not None:
            w.add_rope_freq_base(float(theta))
        if (eps := _first(cfg, "rms_norm_eps")) is not None:
            w.add_layer_norm_rms_eps(float(eps))
        if (eps := _first(cfg, "layer_norm_eps", "layer_norm_epsilon")) is not None:
            w.add_layer_norm_eps(float(eps))
        scaling = rope_scaling(cfg)
        kind = scaling.get("rope_type", scaling.get("type"))
        if kind == "llama3" and self.extra_tensors(cfg):
            pass  # expressed as the rope_freqs.weight tensor (extra_tensors)
        elif kind == "linear":
            import gguf

            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(float(scaling["factor"]))
        elif kind not in (None, "default"):
            raise SourceError(f"rope scaling '{kind}' is not supported yet (linear and none are)")

    def rename(self, hf_name: str, n_blocks: int) -> str | None:
        """The GGUF name of ``hf_name``; None to leave the tensor out."""
        import gguf

        if hf_name.endswith(self.skip_suffixes):
            return None
        new = gguf.get_tensor_name_map(self.arch(), n_blocks).get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise SourceError(f"tensor '{hf_name}' has no GGUF name for architecture '{self.arch_name()}'")
        return new

    def transform(self, hf_name: str, data: np.ndarray, cfg: dict) -> np.ndarray:
        return data

    def extra_tensors(self, cfg: dict) -> dict[str, np.ndarray]:
        """Tensors llama.cpp needs that the checkpoint does not hold (e.g. Llama 3's rope factors)."""
        return {}

    def keep_float(self, gguf_name: str) -> bool:
        """Tensors stored as F32 whatever the requested type (llama.cpp reads them so)."""
        return gguf_name.endswith((".bias", "_norm.weight")) or gguf_name in ("position_embd.weight",
                                                                              "token_types.weight")


def rope_scaling(cfg: dict) -> dict:
    """rope scaling settings: ``rope_scaling`` (transformers 4) or ``rope_parameters`` (transformers 5)."""
    scaling = dict(cfg.get("rope_scaling") or {})
    params = cfg.get("rope_parameters") or {}
    if not scaling and params.get("rope_type", "default") != "default":
        scaling = dict(params)
    return scaling


def llama3_rope_factors(cfg: dict) -> np.ndarray:
    """Per-frequency divisors of Llama 3.1's rope scaling (the smooth low/high-frequency blend)."""
    s = rope_scaling(cfg)
    theta = cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    freqs = 1.0 / (float(theta) ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)))
    factor, low, high = float(s.get("factor", 8.0)), float(s.get("low_freq_factor", 1.0)), float(s.get("high_freq_factor", 4.0))
    old_ctx = float(s.get("original_max_position_embeddings", 8192))
    wavelen = 2 * np.pi / freqs.astype(np.float64)
    smooth = (old_ctx / wavelen - low) / (high - low)
    out = np.where(wavelen < old_ctx / high, 1.0,
                   np.where(wavelen > old_ctx / low, factor, 1.0 / ((1 - smooth) / factor + smooth)))
    return out.astype(np.float32)


def permute_rotary(w: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """Hugging Face's q/k rows (two rotary halves per head) in llama.cpp's interleaved-pairs order."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@register_arch("LlamaForCausalLM", "MistralForCausalLM")
class Llama(ArchUnit):
    gguf_arch = "LLAMA"

    def write_hparams(self, w, cfg, ckpt) -> None:
        super().write_hparams(w, cfg, ckpt)
        w.add_vocab_size(int(cfg["vocab_size"]))
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        w.add_rope_dimension_count(int(head_dim))

    def extra_tensors(self, cfg):
        if rope_scaling(cfg).get("rope_type") == "llama3":
            return {"rope_freqs.weight": llama3_rope_factors(cfg)}
        return {}

    def transform(self, hf_name, data, cfg):
        n_head = cfg["num_attention_heads"]
        if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            return permute_rotary(data, n_head, n_head)
        if hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            return permute_rotary(data, n_head, cfg.get("num_key_value_heads", n_head))
        return data


@register_arch("Qwen2ForCausalLM")
class Qwen2(ArchUnit):
    gguf_arch = "QWEN2"  # NEOX rotary: Hugging Face's layout as is


def _head_dim(cfg: dict) -> int:
    return int(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])


def _write_head_dim(w, cfg: dict) -> None:
    """K/V head width, for architectures whose heads are not hidden_size / heads wide (Gemma, Qwen3)."""
    w.add_key_length(_head_dim(cfg))
    w.add_value_length(_head_dim(cfg))


@register_arch("Qwen3ForCausalLM")
class Qwen3(ArchUnit):
    gguf_arch = "QWEN3"  # Qwen2 without q/k/v biases, with an RMSNorm on each head's q and k

    def write_hparams(self, w, cfg, ckpt) -> None:
        super().write_hparams(w, cfg, ckpt)
        _write_head_dim(w, cfg)


@register_arch("Phi3ForCausalLM")
class Phi3(ArchUnit):
    """Phi-3 / Phi-3.5 / Phi-4-mini: q/k/v in one matrix (attn_qkv), gate and up in one (ffn_up, gate rows
    first), NEOX rotary over ``partial_rotary_factor`` of each head. The 128k variants' LongRoPE is refused
    (by the base class, naming it)."""

    gguf_arch = "PHI3"

    def write_hparams(self, w, cfg, ckpt) -> None:
        super().write_hparams(w, cfg, ckpt)
        params = cfg.get("rope_parameters") or {}
        partial = float(cfg.get("partial_rotary_factor") or params.get("partial_rotary_factor") or 1.0)
        w.add_rope_dimension_count(int(partial * cfg["hidden_size"]) // cfg["num_attention_heads"])
        w.add_sliding_window(int(cfg.get("sliding_window") or 0))  # llama.cpp reads it and runs phi3 without SWA


class _Gemma(ArchUnit):
    """The Gemma family: RMSNorm weights stored as 1 + w (Hugging Face keeps w), the embedding scaled by
    sqrt(hidden) at run time, GELU-gated FFN, tied output, SentencePiece without a leading space."""

    #: llama.cpp fixes the attention scale at 1/sqrt(head_dim), except for one size (layer count) where it is
    #: 1/sqrt(hidden/heads); a checkpoint whose query_pre_attn_scalar says otherwise would convert wrong.
    wide_scale_layers: int | None = None

    def rename(self, hf_name, n_blocks):
        return None if hf_name == "lm_head.weight" else super().rename(hf_name, n_blocks)

    def transform(self, hf_name, data, cfg):
        return data + np.float32(1.0) if hf_name.endswith("norm.weight") else data

    def write_hparams(self, w, cfg, ckpt) -> None:
        super().write_hparams(w, cfg, ckpt)
        _write_head_dim(w, cfg)
        w.add_add_space_prefix(False)
        scalar = cfg.get("query_pre_attn_scalar")
        n_layer = int(cfg["num_hidden_layers"])
        expected = (cfg["hidden_size"] // cfg["num_attention_heads"] if n_layer == self.wide_scale_layers
                    else _head_dim(cfg))
        if scalar is not None and int(scalar) != expected:
            raise SourceError(f"query_pre_attn_scalar is {scalar}, but llama.cpp scales {self.arch_name()} attention "
                              f"by 1/sqrt({expected}) for a {n_layer}-layer model: the GGUF would compute a different model")

    def write_sliding_window(self, w, cfg, default_every: int) -> None:
        """The window and which layers use it: ``layer_types`` as llama.cpp's per-layer pattern array when it
        differs from the family's default (every ``default_every``-th layer global)."""
        types = cfg.get("layer_types")
        sliding = [t == "sliding_attention" for t in types] if types else None
        if sliding is not None and not any(sliding):
            return
        w.add_sliding_window(int(cfg.get("sliding_window") or 4096))
        default = [i % default_every < default_every - 1 for i in range(int(cfg["num_hidden_layers"]))]
        if sliding is not None and sliding != default:
            w.add_sliding_window_pattern(sliding)


@register_arch("GemmaForCausalLM")
class Gemma(_Gemma):
    gguf_arch = "GEMMA"


@register_arch("Gemma2ForCausalLM")
class Gemma2(_Gemma):
    gguf_arch = "GEMMA2"
    wide_scale_layers = 46  # Gemma 2 27B

    def write_hparams(self, w, cfg, ckpt) -> None:
        super().write_hparams(w, cfg, ckpt)
        # llama.cpp always caps (its defaults 50 / 30 where the key is missing): write what the checkpoint says
        for key, add in (("attn_logit_softcapping", w.add_attn_logit_softcapping),
                         ("final_logit_softcapping", w.add_final_logit_softcapping)):
            if not cfg.get(key):
                raise SourceError(f"{key} is unset in config.json; llama.cpp's gemma2 always applies it")
            add(float(cfg[key]))
        self.write_sliding_window(w, cfg, 2)


@register_arch("Gemma3ForCausalLM")
class Gemma3(_Gemma):
    """Gemma 3 text: q/k RMSNorms, five local (sliding-window, rope base 10k) layers per global one (its own
    rope base and scaling), no attention soft-capping."""

    gguf_arch = "GEMMA3"
    wide_scale_layers = 62  # Gemma 3 27B

    def write_hparams(self, w, cfg, ckpt) -> None:
        params = cfg.get("rope_parameters") or {}
        global_rope = params.get("full_attention") or params
        local_rope = params.get("sliding_attention") or {}
        # the global layers' rope (base and scaling) as the base class reads a single-rope config
        scaling = global_rope if "full_attention" in params else (cfg.get("rope_scaling") or {})
        flat = {k: v for k, v in cfg.items() if k not in ("rope_parameters", "rope_scaling", "rope_theta")}
        flat["rope_theta"] = float(global_rope.get("rope_theta") or cfg.get("rope_theta") or 1_000_000.0)
        flat["rope_scaling"] = scaling
        super().write_hparams(w, flat, ckpt)
        if cfg.get("attn_logit_softcapping"):
            raise SourceError("attn_logit_softcapping is set, but llama.cpp's gemma3 has none")
        local_base = float(local_rope.get("rope_theta") or cfg.get("rope_local_base_freq") or 10_000.0)
        if local_base != 10_000.0:
            w.add_rope_freq_base_swa(local_base)
        if cfg.get("final_logit_softcapping"):
            w.add_final_logit_softcapping(float(cfg["final_logit_softcapping"]))
        self.write_sliding_window(w, cfg, 6)


@register_arch("BertModel", "BertForMaskedLM")
class Bert(ArchUnit):
    gguf_arch = "BERT"
    _dropped = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")

    def write_hparams(self, w, cfg, ckpt) -> None:
        super().write_hparams(w, cfg, ckpt)
        w.add_causal_attention(False)
        pooling = _pooling_type(ckpt)
        if pooling is not None:
            w.add_pooling_type(pooling)
        w.add_token_type_count(int(cfg.get("type_vocab_size", 1)))

    def rename(self, hf_name, n_blocks):
        name = hf_name.removeprefix("bert.")
        if name in self._dropped or name.startswith(("cls.predictions", "cls.seq_relationship")):
            return None
        name = name.replace(".gamma", ".weight").replace(".beta", ".bias")
        return super().rename(name, n_blocks)


def _pooling_type(ckpt: HFCheckpoint):
    """sentence-transformers' pooling (modules.json -> <Pooling>/config.json) as gguf.PoolingType."""
    import gguf

    modules = ckpt.json("modules.json")
    if not modules:
        return None
    pool = next((m for m in modules if str(m.get("type", "")).endswith("Pooling")), None)
    if pool is None:
        return None
    cfg = ckpt.json(f"{pool.get('path', '')}/config.json".lstrip("/")) or {}
    if cfg.get("pooling_mode_mean_tokens") or cfg.get("pooling_mode") == "mean":
        return gguf.PoolingType.MEAN
    if cfg.get("pooling_mode_cls_token") or cfg.get("pooling_mode") == "cls":
        return gguf.PoolingType.CLS
    if cfg.get("pooling_mode_lasttoken") or cfg.get("pooling_mode") == "lasttoken":
        return gguf.PoolingType.LAST
    raise SourceError(f"sentence-transformers pooling in {pool.get('path')}/config.json is not mean, cls or last-token")


def arch_unit(ckpt: HFCheckpoint) -> ArchUnit:
    name = ckpt.architecture
    if name not in ARCHITECTURES:
        raise SourceError(f"architecture '{name}' cannot be converted to GGUF yet; supported: "
                          f"{', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[name]
