"""``backend="edge"``: edgelift's own GGUF decoder for the Llama family (Llama, SmolLM2, TinyLlama, Qwen2/3,
Phi-3, Gemma 1/2/3).

It exists for what llama.cpp cannot do on a small device: run a model larger than its memory with a
hard budget (``memory_budget``: weights stream from storage through ``FlashWeights``). Weights stay in
their GGUF blocks; matrix-vector products run on the blocks (``gguf_kernels``). The forward pass
below reads top to bottom like the architecture diagram.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..core.formats import ModelFormat
from ..core.gguf import read_gguf_info
from ..core.tensors import TensorSpec, physical_memory_bytes
from ..errors import InputMismatchError, InvalidOptionError, ModelFormatError
from .base import Session, register_backend
from .generation import RunStats, check_request, sample, stream_tokens
from .gguf_kernels import KERNELS, rows_of
from .gguf_tokenizer import tokenizer_from_gguf
from .weights import RAW_MATRICES, FlashWeights, ResidentWeights, TensorRef, WeightStore, split_rows, tensor_refs

MATRIX_TYPES = ("F32", "F16", *KERNELS)  # what the kernels multiply (numpy for all, ORT for some)
BLOCK_MATRICES = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"}


@dataclass(frozen=True)
class Family:
    """What an architecture changes in the Llama block, as flags (llama.cpp's build function for it)."""

    neox: bool = False  # rotary on halves (i, i + d/2) instead of pairs (2i, 2i+1)
    act: str = "silu"  # the gated FFN's activation: silu (SwiGLU) or gelu (GeGLU, tanh approximation)
    embed_scale: bool = False  # token embeddings times sqrt(n_embd)
    qk_norm: bool = False  # an RMSNorm over each head's q and k before the rotation
    post_norms: bool = False  # an RMSNorm on the attention and FFN outputs, before each residual add
    swa_every: int = 0  # sliding-window layers by default: all but every n-th (0: none)
    swa_window: int = 0  # the window when the header names none
    swa_rope_global: bool = False  # sliding layers rotate with the global base/scale (else base 10k, scale 1)
    softcaps: tuple[float, float] = (0.0, 0.0)  # attention / final logit soft-caps when the header names none
    wide_scale_layers: int = 0  # the one model size whose attention scale is 1/sqrt(n_embd / n_head)
    fused: bool = False  # q/k/v stored as one attn_qkv, gate/up as one double-height ffn_up


FAMILIES = {
    "llama": Family(),
    "qwen2": Family(neox=True),
    "qwen3": Family(neox=True, qk_norm=True),
    "phi3": Family(neox=True, fused=True),  # llama.cpp runs it without its sliding window
    "gemma": Family(neox=True, act="gelu", embed_scale=True),
    "gemma2": Family(neox=True, act="gelu", embed_scale=True, post_norms=True, swa_every=2, swa_window=4096,
                     swa_rope_global=True, softcaps=(50.0, 30.0), wide_scale_layers=46),
    "gemma3": Family(neox=True, act="gelu", embed_scale=True, qk_norm=True, post_norms=True, swa_every=6,
                     wide_scale_layers=62),
}
ARCHES = tuple(FAMILIES)


@dataclass
class HParams:
    arch: str
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    rope_base: float
    eps: float
    n_vocab: int
    n_ctx: int
    n_rot: int = 0  # rotated dims per head (partial rotary: fewer than head_dim)
    rope_scale: float = 1.0  # linear rope scaling: positions times this
    rope_base_swa: float = 10000.0
    rope_scale_swa: float = 1.0
    attn_scale: float = 0.0
    attn_softcap: float = 0.0
    final_softcap: float = 0.0
    n_swa: int = 0
    swa_layers: tuple[bool, ...] = ()

    @property
    def family(self) -> Family:
        return FAMILIES[self.arch]

    @classmethod
    def from_gguf(cls, meta: dict, n_vocab: int, n_ctx: int) -> "HParams":
        """Hyperparameters from the header, each checked for type and range (a hostile file must not
        reach a division by zero or size a cache by an unchecked count)."""
        arch = meta.get("general.architecture")
        if arch not in FAMILIES:
            raise ModelFormatError(f"the edge engine runs {', '.join(ARCHES)} models, not '{arch}'")
        fam = FAMILIES[arch]

        def num(name: str, default=None, *, kind=int, lo=1, hi=1 << 20):
            v = meta.get(f"{arch}.{name}", default)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (kind is float or float(v).is_integer())
            if not ok or not lo <= v <= hi or v != v:
                raise ModelFormatError(f"{arch}.{name} is {v!r} in the GGUF header: expected a number from {lo} to "
                                       f"{hi}; the file is corrupted or not a {arch} model")
            return kind(v)

        n_embd, n_head = num("embedding_length"), num("attention.head_count", hi=1 << 12)
        n_head_kv = num("attention.head_count_kv", n_head, hi=n_head)
        if n_head % n_head_kv:
            raise ModelFormatError(f"{arch}.attention.head_count {n_head} is not a multiple of head_count_kv "
                                   f"{n_head_kv}; the file is corrupted")
        head_dim = num("attention.key_length", n_embd // n_head if n_embd >= n_head else 0, hi=1 << 14)
        if num("attention.value_length", head_dim, hi=1 << 14) != head_dim:
            raise ModelFormatError(f"{arch}: key and value heads of different widths are not supported by the edge "
                                   "engine (use backend='llama.cpp')")
        n_rot = num("rope.dimension_count", head_dim, hi=head_dim)
        if n_rot % 2:
            raise ModelFormatError(f"{arch}.rope.dimension_count {n_rot} is odd; the file is corrupted")
        n_layer = num("block_count", hi=1 << 12)
        rope_scale = 1.0
        kind = meta.get(f"{arch}.rope.scaling.type", "none")
        if kind == "linear":
            rope_scale = 1.0 / num("rope.scaling.factor", kind=float, lo=1e-6, hi=1e6)
        elif kind != "none":
            raise ModelFormatError(f"{arch}: rope scaling '{kind}' is not supported by the edge engine (linear and "
                                   "Llama 3's are); use backend='llama.cpp'")
        base = num("rope.freq_base", 10000.0, kind=float, lo=1e-3, hi=1e12)
        caps = (num("attn_logit_softcapping", fam.softcaps[0], kind=float, lo=0.0, hi=1e6),
                num("final_logit_softcapping", fam.softcaps[1], kind=float, lo=0.0, hi=1e6))
        n_swa, swa_layers = 0, (False,) * n_layer
        if fam.swa_every:
            n_swa = num("attention.sliding_window", fam.swa_window, lo=0, hi=1 << 24)
            pattern = meta.get(f"{arch}.attention.sliding_window_pattern", fam.swa_every)
            if isinstance(pattern, dict):  # an array: one flag per layer
                pattern = pattern.get("values")
            if isinstance(pattern, (list, tuple)) and len(pattern) == n_layer:
                swa_layers = tuple(bool(v) for v in pattern)
            elif isinstance(pattern, int) and not isinstance(pattern, bool) and 0 <= pattern <= 1 << 12:
                swa_layers = tuple(pattern == 0 or i % pattern < pattern - 1 for i in range(n_layer))  # 0: all
            else:
                raise ModelFormatError(f"{arch}.attention.sliding_window_pattern is {pattern!r}: expected a layer "
                                       f"count or {n_layer} flags; the file is corrupted")
            if n_swa == 0:
                swa_layers = (False,) * n_layer
        wide = n_layer == fam.wide_scale_layers
        return cls(arch, n_embd, n_layer, n_head, n_head_kv, head_dim, base,
                   num("attention.layer_norm_rms_epsilon", 1e-5, kind=float, lo=1e-30, hi=1.0), n_vocab,
                   min(n_ctx, num("context_length", n_ctx, hi=1 << 24)), n_rot=n_rot, rope_scale=rope_scale,
                   rope_base_swa=base if fam.swa_rope_global else num("rope.freq_base_swa", 10000.0, kind=float,
                                                                       lo=1e-3, hi=1e12),
                   rope_scale_swa=rope_scale if fam.swa_rope_global else 1.0,
                   attn_scale=1.0 / float(np.sqrt(n_embd / n_head if wide else head_dim)),
                   attn_softcap=caps[0], final_softcap=caps[1], n_swa=n_swa, swa_layers=swa_layers)

    def check_tensors(self, refs: dict, path: Path, matrix_types: tuple[str, ...] = MATRIX_TYPES) -> None:
        """Every tensor the forward pass reads exists with the shape these hyperparameters imply, and the
        KV cache they size fits this machine: so a file's header cannot size memory its weights don't back."""
        e, q, kv, fam = self.n_embd, self.n_head * self.head_dim, self.n_head_kv * self.head_dim, self.family
        want = {"token_embd.weight": (self.n_vocab, e), "output_norm.weight": (e,)}
        for i in range(self.n_layer):
            p = f"blk.{i}."
            want.update({p + "attn_norm.weight": (e,), p + "attn_q.weight": (q, e), p + "attn_k.weight": (kv, e),
                         p + "attn_v.weight": (kv, e), p + "attn_output.weight": (e, q), p + "ffn_norm.weight": (e,)})
            n_ff = refs[p + "ffn_up.weight"].shape[0] if p + "ffn_up.weight" in refs else -1
            want.update({p + "ffn_gate.weight": (n_ff, e), p + "ffn_up.weight": (n_ff, e),
                         p + "ffn_down.weight": (e, n_ff)})
            if fam.qk_norm:
                want.update({p + "attn_q_norm.weight": (self.head_dim,), p + "attn_k_norm.weight": (self.head_dim,)})
            if fam.post_norms:
                want.update({p + "post_attention_norm.weight": (e,), p + "post_ffw_norm.weight": (e,)})
        if "output.weight" in refs:
            want["output.weight"] = (self.n_vocab, e)
        for name, shape in want.items():
            ref = refs.get(name)
            if ref is None:
                raise ModelFormatError(f"{path}: tensor '{name}' is missing ({self.arch}, {self.n_layer} blocks); "
                                       "the file is incomplete or not a model the edge engine runs")
            if tuple(ref.shape) != shape:
                raise ModelFormatError(f"{path}: tensor '{name}' has shape {list(ref.shape)}, the header's "
                                       f"hyperparameters need {list(shape)}; the file is corrupted")
            if len(shape) == 2 and ref.ggml_type not in matrix_types:
                raise ModelFormatError(f"{path}: tensor '{name}' is {ref.ggml_type}; the edge engine computes with "
                                       f"{', '.join(matrix_types)} here (use backend='llama.cpp')")
            if len(shape) == 1 and ref.ggml_type != "F32":
                raise ModelFormatError(f"{path}: tensor '{name}' is {ref.ggml_type}, norms must be F32")
        if any(n.startswith("rope_factors_") for n in refs) or "blk.0.rope_factors_long.weight" in refs:
            raise ModelFormatError(f"{path}: LongRoPE factors (Phi-3 128k) are not supported by the edge engine; "
                                   "use backend='llama.cpp'")
        kv_bytes = 2 * self.n_layer * self.n_ctx * kv * 2  # fp16 K and V
        if kv_bytes > physical_memory_bytes():
            raise InvalidOptionError(f"a {self.n_ctx}-token KV cache needs {kv_bytes / 2**30:.1f} GiB, more than this "
                                     "machine's memory: load with a smaller n_ctx")


def unfuse(refs: dict[str, TensorRef], hp: HParams) -> dict[str, TensorRef]:
    """Phi-3's fused matrices as the separate ones the forward pass reads, without copying: a GGUF matrix's
    rows are contiguous (quantization blocks never span rows), so q/k/v are row ranges of ``attn_qkv`` and
    gate/up the two halves of a double-height ``ffn_up``."""
    out = dict(refs)
    if not hp.family.fused:
        return out
    q, kv = hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim
    for i in range(hp.n_layer):
        p = f"blk.{i}."
        qkv = out.pop(p + "attn_qkv.weight", None)
        if qkv is not None:
            if qkv.shape[0] != q + 2 * kv:
                raise ModelFormatError(f"tensor '{qkv.name}' has {qkv.shape[0]} rows; the header's heads need "
                                       f"{q + 2 * kv}; the file is corrupted")
            out.update(split_rows(qkv, {p + "attn_q.weight": q, p + "attn_k.weight": kv, p + "attn_v.weight": kv}))
        up = out.get(p + "ffn_up.weight")
        if up is not None and p + "ffn_gate.weight" not in out:  # (a file with gate and up apart is read as is)
            if up.shape[0] % 2:
                raise ModelFormatError(f"tensor '{up.name}' (gate and up fused) has an odd row count; the file is "
                                       "corrupted")
            out.update(split_rows(up, {p + "ffn_gate.weight": up.shape[0] // 2, p + "ffn_up.weight": up.shape[0] // 2}))
    return out


def f16(x: np.ndarray) -> np.ndarray:
    """Rounded through fp16, as llama.cpp stores K/V and feeds its fp16 attention matmuls."""
    return x.astype(np.float16).astype(np.float32)


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + np.float32(eps)) * w


def gelu(x: np.ndarray) -> np.ndarray:
    """GELU, tanh approximation (Gemma's gelu_pytorch_tanh; ggml_gelu)."""
    return np.float32(0.5) * x * (1 + np.tanh(np.float32(0.7978845608) * (x + np.float32(0.044715) * x * x * x)))


def rope_tables(pos: np.ndarray, d: int, base: float, factors: np.ndarray | None,
                scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of each position's rotation angles, (n, 1, d/2): computed once per forward pass for each
    (base, scale) the layers use and shared by their q and k. ``scale``: linear rope scaling."""
    inv = base ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    if factors is not None:
        inv = inv / factors
    ang = (pos[:, None].astype(np.float64) * scale * inv[None, :]).astype(np.float32)[:, None, :]
    return np.cos(ang), np.sin(ang)


def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, neox: bool) -> np.ndarray:
    """Rotate (n, heads, head_dim) by position: pairs (2i, 2i+1), or halves (i, i + d/2) for NEOX, over the
    first 2 * cos.shape[-1] dims of each head (the rest pass through: partial rotary)."""
    d = 2 * cos.shape[-1]
    r, rest = (x, None) if d == x.shape[-1] else (x[..., :d], x[..., d:])
    a, b = (r[..., : d // 2], r[..., d // 2:]) if neox else (r[..., 0::2], r[..., 1::2])
    ra, rb = a * cos - b * sin, a * sin + b * cos
    out = np.concatenate([ra, rb], -1) if neox else np.stack([ra, rb], -1).reshape(r.shape)
    return out if rest is None else np.concatenate([out, rest], -1)


class LlamaEngine:
    """The Llama block and its family's variations (``Family``): Qwen2/3, Phi-3, Gemma 1/2/3."""

    def __init__(self, store: WeightStore, hp: HParams) -> None:
        self.store, self.hp, self.fam = store, hp, hp.family
        self.pinned = {name: raw.view(np.float32) if store.refs[name].ggml_type == "F32" else raw
                       for name, raw in store.pinned.items()}
        self.rope_factors = self.pinned.get("rope_freqs.weight")
        # fp16, as llama.cpp keeps it (half the memory; the values are rounded to fp16 either way);
        # head-major: each head's keys contiguous
        shape = (hp.n_layer, hp.n_head_kv, hp.n_ctx, hp.head_dim)
        self.k_cache, self.v_cache = np.zeros(shape, np.float16), np.zeros(shape, np.float16)
        self.shapes = {u.name: {t.name: t for t in u.tensors} for u in store.units}
        self.on_ffn_activation = None  # optional callback(layer, (n, n_ff) array): what sparsity studies read

    def _mv(self, w: dict, unit: str, name: str, x: np.ndarray) -> np.ndarray:
        return self._bias(w, name, w[name](x))  # a prepared kernel on the quantized blocks

    def _norm(self, w: dict, name: str, x: np.ndarray) -> np.ndarray:
        return rms_norm(x, w[name].view(np.float32), self.hp.eps)

    def _fused(self, w: dict, p: str):
        """ggml's two graphs per block (norm + q/k/v; output projection + FFN) when this unit's weights
        are on ggml kernels; None for the step-by-step path."""
        raw = w.get(RAW_MATRICES)
        if raw is None or not BLOCK_MATRICES <= set(raw):
            return None
        if RAW_MATRICES + ".block" not in w:
            from .ggml_kernels import GgmlBlock

            norm_names = ("attn_norm", "ffn_norm") + (("post_attention_norm", "post_ffw_norm")
                                                      if self.fam.post_norms else ())
            norms = {n: w[p + n + ".weight"].view(np.float32) for n in norm_names}
            w[RAW_MATRICES + ".block"] = GgmlBlock(raw, norms, self.hp.eps, self.store.threads, self.fam.act)
        return w[RAW_MATRICES + ".block"]

    def _bias(self, w: dict, name: str, y: np.ndarray) -> np.ndarray:
        bias = w.get(name.replace(".weight", ".bias"))  # Qwen2's q/k/v biases (F32)
        return y if bias is None else y + bias.view(np.float32)

    def forward(self, ids: list[int], pos0: int) -> np.ndarray:
        """Logits (n, vocab) for tokens ``ids`` at positions pos0.., extending the KV cache."""
        hp, fam, n = self.hp, self.fam, len(ids)
        raw, etype, cols = self.store.embedding_rows(ids)
        x = rows_of(raw, etype, (n, cols), np.arange(n))                       # (n, d) token embeddings
        if fam.embed_scale:
            x = x * np.float32(np.sqrt(hp.n_embd))
        pos, t = np.arange(pos0, pos0 + n), pos0 + n
        group, kvh, hd = hp.n_head // hp.n_head_kv, hp.n_head_kv, hp.head_dim
        tables = {False: rope_tables(pos, hp.n_rot, hp.rope_base, self.rope_factors, hp.rope_scale),
                  True: rope_tables(pos, hp.n_rot, hp.rope_base_swa, self.rope_factors, hp.rope_scale_swa)}
        back = pos[:, None] - np.arange(t)[None, :]                                # query pos - key pos, (n, t)
        masks = {False: np.where(back >= 0, np.float32(0), np.float32(-np.inf)),   # causal
                 True: np.where((back >= 0) & (back < max(hp.n_swa, 1)), np.float32(0), np.float32(-np.inf))}
        for i in range(hp.n_layer):
            unit, p, swa = f"blk.{i}", f"blk.{i}.", hp.swa_layers[i] if hp.swa_layers else False
            w = self.store.get(unit)
            block = self._fused(w, p)                                          # ggml: 2 graphs for the block
            if block is not None:
                q, k, v = (self._bias(w, p + m + ".weight", y) for m, y in zip(("attn_q", "attn_k", "attn_v"),
                                                                               block.head(x)))
            else:
                h = self._norm(w, p + "attn_norm.weight", x)
                q, k, v = (self._mv(w, unit, p + m + ".weight", h) for m in ("attn_q", "attn_k", "attn_v"))
            q, k, v = q.reshape(n, hp.n_head, hd), k.reshape(n, kvh, hd), v.reshape(n, kvh, hd)
            if fam.qk_norm:                                                    # Qwen3, Gemma 3: per-head RMSNorm
                q, k = self._norm(w, p + "attn_q_norm.weight", q), self._norm(w, p + "attn_k_norm.weight", k)
            cos, sin = tables[swa]
            q, k = rope(q, cos, sin, fam.neox), rope(k, cos, sin, fam.neox)
            self.k_cache[i, :, pos0:t], self.v_cache[i, :, pos0:t] = k.transpose(1, 0, 2), v.transpose(1, 0, 2)
            # grouped-query attention without repeating K/V: the query heads that share a KV head as rows
            qg = f16(q).reshape(n, kvh, group, hd).transpose(1, 2, 0, 3).reshape(kvh, group * n, hd)
            K, V = self.k_cache[i, :, :t].astype(np.float32), self.v_cache[i, :, :t].astype(np.float32)
            s = (qg @ K.transpose(0, 2, 1)) * np.float32(hp.attn_scale)                     # (kvh, group*n, t)
            if hp.attn_softcap:                                                # Gemma 2: cap*tanh(s/cap)
                s = np.float32(hp.attn_softcap) * np.tanh(s / np.float32(hp.attn_softcap))
            s = s.reshape(kvh, group, n, t) + masks[swa]                       # llama.cpp's fp16 KV cache
            s = np.exp(s - s.max(-1, keepdims=True))
            probs = f16(s / s.sum(-1, keepdims=True)).reshape(kvh, group * n, t)
            att = (probs @ V).reshape(kvh, group, n, hd).transpose(2, 0, 1, 3).reshape(n, -1)
            if block is not None:                                              # the same steps, in one graph
                act = None if self.on_ffn_activation is None else np.empty((n, block.rows("ffn_up")), np.float32)
                x = block.tail(x, att, act)
                if act is not None:
                    self.on_ffn_activation(i, act)
                self.store.done(unit)
                continue
            a = self._mv(w, unit, p + "attn_output.weight", att)
            x = x + (self._norm(w, p + "post_attention_norm.weight", a) if fam.post_norms else a)
            h = self._norm(w, p + "ffn_norm.weight", x)
            gate = self._mv(w, unit, p + "ffn_gate.weight", h)
            gate = gelu(gate) if fam.act == "gelu" else gate / (1 + np.exp(-gate))
            act = gate * self._mv(w, unit, p + "ffn_up.weight", h)               # SwiGLU / GeGLU
            if self.on_ffn_activation is not None:
                self.on_ffn_activation(i, act)
            d = self._mv(w, unit, p + "ffn_down.weight", act)
            x = x + (self._norm(w, p + "post_ffw_norm.weight", d) if fam.post_norms else d)
            self.store.done(unit)
        h = rms_norm(x, self.pinned["output_norm.weight"], hp.eps)
        logits = np.empty((n, hp.n_vocab), np.float32)
        for u in self.store.units:                                             # the output matrix, chunk by chunk
            if u.rows is not None:
                w = self.store.get(u.name)
                logits[:, u.rows[0]:u.rows[1]] = w[u.tensors[0].name](h)
                self.store.done(u.name)
        if hp.final_softcap:                                                   # Gemma 2: cap*tanh(z/cap)
            logits = np.float32(hp.final_softcap) * np.tanh(logits / np.float32(hp.final_softcap))
        return logits


class EdgeLlmSession(Session):
    """GGUF models run by the edge engine; ``memory_budget`` streams weights (``FlashWeights``)."""

    def __init__(self, path: Path, n_ctx: int = 512, memory_budget=None, drop_cache: bool = True,
                 prefetch: bool = True, kernels: str = "ort", naive: bool = False, threads: int = 1) -> None:
        info = read_gguf_info(path, arrays=("tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                                            "tokenizer.ggml.merges", "tokenizer.ggml.scores",
                                            *(f"{a}.attention.sliding_window_pattern" for a in FAMILIES)))
        arch = info.metadata.get("general.architecture")
        if arch not in FAMILIES:  # the architecture first: a Gemma file must not be refused for its tokenizer
            raise ModelFormatError(f"{path.name} is a '{arch}' model; the edge engine runs {', '.join(ARCHES)} "
                                   "(use backend='llama.cpp' for it)")
        self.tokenizer = tokenizer_from_gguf(info.metadata)
        self.hp = HParams.from_gguf(info.metadata, len(self.tokenizer.tokens), n_ctx)
        if kernels == "ggml":
            from .ggml_kernels import SUPPORTED as matrix_types
        else:
            matrix_types = MATRIX_TYPES
        refs = unfuse(tensor_refs(info), self.hp)
        self.hp.check_tensors(refs, path, matrix_types)
        self.kernels, self.threads = kernels, threads
        if memory_budget is None:
            self.store: WeightStore = ResidentWeights(path, info, kernels, threads, refs=refs)
        else:
            from .memory import parse_budget

            self.store = FlashWeights(path, info, parse_budget(memory_budget), drop_cache=drop_cache, prefetch=prefetch,
                                      kernels=kernels, naive=naive, threads=threads, refs=refs)
        self.engine = LlamaEngine(self.store, self.hp)
        self.n_vocab, self.n_ctx = self.hp.n_vocab, self.hp.n_ctx
        self.inputs = [TensorSpec("tokens", (None,), "int32")]
        self.outputs = [TensorSpec("logits", (None, self.n_vocab), "float32")]
        self.last_stats: RunStats | None = None
        self._pos = 0  # tokens in the KV cache (eval_tokens)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Logits for every position of ``tokens`` (a fresh sequence: the KV cache restarts)."""
        ids = [int(t) for t in np.asarray(feeds["tokens"]).reshape(-1)]
        if not ids or len(ids) > self.n_ctx:
            raise InvalidOptionError(f"need 1..{self.n_ctx} tokens (n_ctx), got {len(ids)}")
        bad = [t for t in ids if not 0 <= t < self.n_vocab]
        if bad:
            raise InputMismatchError(f"token ids {bad[:5]} are outside the vocabulary [0, {self.n_vocab})")
        return {"logits": self.engine.forward(ids, 0)}

    def eval_tokens(self, ids: list[int], reset: bool = False) -> np.ndarray:
        """Extend the sequence by ``ids`` (restart it with ``reset``); the last position's logits."""
        pos = 0 if reset else self._pos
        if pos + len(ids) > self.n_ctx:
            raise InvalidOptionError(f"the sequence would reach {pos + len(ids)} tokens; the context holds {self.n_ctx}")
        logits = self.engine.forward([int(t) for t in ids], pos)[-1]
        self._pos = pos + len(ids)
        return logits

    def tokenize(self, text: str, add_bos: bool = True) -> np.ndarray:
        return np.asarray(self.tokenizer.encode(text, add_bos=add_bos and self.tokenizer.add_bos), np.int32)

    def detokenize(self, ids) -> str:
        return self.tokenizer.decode(ids)

    def generate(self, prompt: str, max_tokens: int = 32, temperature: float = 0.0, stream: bool = False,
                 top_k: int = 0, top_p: float = 1.0, seed: int = 0) -> str | Iterator[str]:
        """Complete ``prompt``: greedy at temperature 0, else temperature / top-k / top-p sampling."""
        ids = self.tokenize(prompt).tolist() if prompt else []
        check_request(prompt, max_tokens, len(ids), self.n_ctx)
        pieces = self._generate(ids, max_tokens, temperature, top_k, top_p, np.random.default_rng(seed))
        return pieces if stream else "".join(pieces)

    def _generate(self, ids, max_tokens, temperature, top_k, top_p, rng) -> Iterator[str]:
        st = self.store.stats
        read0, io0, wait0 = st.bytes_read, st.io_seconds, st.wait_seconds
        st.peak_resident_bytes = st.resident_bytes
        stats = RunStats()
        pos = len(ids)

        def step(tok: int) -> np.ndarray:
            nonlocal pos
            pos += 1
            return self.engine.forward([tok], pos - 1)[-1]

        eos = {self.tokenizer.eos} if self.tokenizer.eos is not None else set()
        yield from stream_tokens(lambda: self.engine.forward(ids, 0)[-1], step, self.tokenizer.decode, eos, len(ids),
                                 max_tokens, lambda z: sample(z, temperature, top_k, top_p, rng), stats)
        stats.bytes_read = st.bytes_read - read0
        stats.peak_resident_weight_bytes = st.peak_resident_bytes
        stats.io_wait_s = st.wait_seconds - wait0
        stats.compute_s -= stats.io_wait_s
        stats.extra["io_read_s"] = st.io_seconds - io0
        self.last_stats = stats

    def close(self) -> None:
        self.store.close()


KERNEL_CHOICES = ("auto", "ggml", "ort", "numpy")
DEFAULT_THREADS = 4  # like llama.cpp: a few cores; more rarely helps a memory-bound decode


def resolve_kernels(kernels: str) -> str:
    """``auto``: ggml's kernels when the llama extra is installed (fast K-quants, on the GGUF bytes as
    they are, threaded), else ONNX Runtime's; ``ggml`` asked for by name and missing is an error."""
    if kernels not in KERNEL_CHOICES:
        raise InvalidOptionError(f"kernels must be one of {', '.join(KERNEL_CHOICES)}, got {kernels!r}")
    if kernels in ("auto", "ggml"):
        from .ggml_kernels import available

        why = available()
        if why is None:
            return "ggml"
        if kernels == "ggml":
            raise InvalidOptionError(f"kernels='ggml' is not available: {why}")
        return "ort"
    return kernels


@register_backend("edge", formats=(ModelFormat.GGUF,), package="numpy", extra="")
def open_edge(path: Path, threads: int | None, *, n_ctx: int = 512, memory_budget=None, logits_all: bool = True,
              embedding: bool = False, drop_cache: bool = True, prefetch: bool = True,
              kernels: str = "auto", naive: bool = False) -> EdgeLlmSession:
    """``kernels``: "ggml" (llama.cpp's CPU kernels on the GGUF bytes, ``threads`` threads; resident and
    streamed weights alike), "ort" (ONNX Runtime's MatMulNBits for Q4_0/Q4_1/Q8_0/Q4_K, one thread per
    matrix session; numpy for the rest and for streamed weights), "numpy", or "auto" (ggml when the llama
    extra is installed, else ort)."""
    if embedding:
        raise InvalidOptionError("the edge engine runs decoder language models; use backend='llama.cpp' for embeddings")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise InvalidOptionError(f"threads must be a positive integer, got {threads!r}")
    import os

    n_threads = threads or min(os.cpu_count() or 1, DEFAULT_THREADS)
    return EdgeLlmSession(Path(path), n_ctx, memory_budget, drop_cache, prefetch, resolve_kernels(kernels), naive,
                          n_threads)
