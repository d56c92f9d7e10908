"""``backend="edge"``: edgelift's own GGUF decoder for the Llama family (Llama, SmolLM2, TinyLlama, Qwen2).

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
from .weights import RAW_MATRICES, FlashWeights, ResidentWeights, WeightStore, tensor_refs

MATRIX_TYPES = ("F32", "F16", *KERNELS)  # what the kernels multiply (numpy for all, ORT for some)
ARCHES = {"llama": False, "qwen2": True}  # architecture -> NEOX-style rotary (halves) instead of pairs
BLOCK_MATRICES = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"}


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

    @classmethod
    def from_gguf(cls, meta: dict, n_vocab: int, n_ctx: int) -> "HParams":
        """Hyperparameters from the header, each checked for type and range (a hostile file must not
        reach a division by zero or size a cache by an unchecked count)."""
        arch = meta.get("general.architecture")
        if arch not in ARCHES:
            raise ModelFormatError(f"the edge engine runs {', '.join(ARCHES)} models, not '{arch}'")

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
        head_dim = num("rope.dimension_count", n_embd // n_head if n_embd >= n_head else 0, hi=1 << 14)
        if head_dim % 2:
            raise ModelFormatError(f"{arch}.rope.dimension_count {head_dim} is odd; the file is corrupted")
        return cls(arch, n_embd, num("block_count", hi=1 << 12), n_head, n_head_kv, head_dim,
                   num("rope.freq_base", 10000.0, kind=float, lo=1e-3, hi=1e12),
                   num("attention.layer_norm_rms_epsilon", 1e-5, kind=float, lo=1e-30, hi=1.0), n_vocab,
                   min(n_ctx, num("context_length", n_ctx, hi=1 << 24)))

    def check_tensors(self, refs: dict, path: Path, matrix_types: tuple[str, ...] = MATRIX_TYPES) -> None:
        """Every tensor the forward pass reads exists with the shape these hyperparameters imply, and the
        KV cache they size fits this machine: so a file's header cannot size memory its weights don't back."""
        e, q, kv = self.n_embd, self.n_head * self.head_dim, self.n_head_kv * self.head_dim
        want = {"token_embd.weight": (self.n_vocab, e), "output_norm.weight": (e,)}
        for i in range(self.n_layer):
            p = f"blk.{i}."
            want.update({p + "attn_norm.weight": (e,), p + "attn_q.weight": (q, e), p + "attn_k.weight": (kv, e),
                         p + "attn_v.weight": (kv, e), p + "attn_output.weight": (e, q), p + "ffn_norm.weight": (e,)})
            n_ff = refs[p + "ffn_up.weight"].shape[0] if p + "ffn_up.weight" in refs else -1
            want.update({p + "ffn_gate.weight": (n_ff, e), p + "ffn_up.weight": (n_ff, e),
                         p + "ffn_down.weight": (e, n_ff)})
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
        kv_bytes = 2 * self.n_layer * self.n_ctx * kv * 2  # fp16 K and V
        if kv_bytes > physical_memory_bytes():
            raise InvalidOptionError(f"a {self.n_ctx}-token KV cache needs {kv_bytes / 2**30:.1f} GiB, more than this "
                                     "machine's memory: load with a smaller n_ctx")


def f16(x: np.ndarray) -> np.ndarray:
    """Rounded through fp16, as llama.cpp stores K/V and feeds its fp16 attention matmuls."""
    return x.astype(np.float16).astype(np.float32)


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + np.float32(eps)) * w


def rope_tables(pos: np.ndarray, d: int, base: float, factors: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of each position's rotation angles, (n, 1, d/2): computed once per forward pass and
    shared by every layer's q and k."""
    inv = base ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    if factors is not None:
        inv = inv / factors
    ang = (pos[:, None].astype(np.float64) * inv[None, :]).astype(np.float32)[:, None, :]
    return np.cos(ang), np.sin(ang)


def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, neox: bool) -> np.ndarray:
    """Rotate (n, heads, head_dim) by position: pairs (2i, 2i+1), or halves (i, i + d/2) for NEOX."""
    d = x.shape[-1]
    a, b = (x[..., : d // 2], x[..., d // 2:]) if neox else (x[..., 0::2], x[..., 1::2])
    ra, rb = a * cos - b * sin, a * sin + b * cos
    return np.concatenate([ra, rb], -1) if neox else np.stack([ra, rb], -1).reshape(x.shape)


class LlamaEngine:
    def __init__(self, store: WeightStore, hp: HParams) -> None:
        self.store, self.hp = store, hp
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

    def _fused(self, w: dict, p: str):
        """ggml's two graphs per block (norm + q/k/v; output projection + FFN) when this unit's weights
        are on ggml kernels; None for the step-by-step path."""
        raw = w.get(RAW_MATRICES)
        if raw is None or not BLOCK_MATRICES <= set(raw):
            return None
        if RAW_MATRICES + ".block" not in w:
            from .ggml_kernels import GgmlBlock

            norms = {n: w[p + n + ".weight"].view(np.float32) for n in ("attn_norm", "ffn_norm")}
            w[RAW_MATRICES + ".block"] = GgmlBlock(raw, norms, self.hp.eps, self.store.threads)
        return w[RAW_MATRICES + ".block"]

    def _bias(self, w: dict, name: str, y: np.ndarray) -> np.ndarray:
        bias = w.get(name.replace(".weight", ".bias"))  # Qwen2's q/k/v biases (F32)
        return y if bias is None else y + bias.view(np.float32)

    def forward(self, ids: list[int], pos0: int) -> np.ndarray:
        """Logits (n, vocab) for tokens ``ids`` at positions pos0.., extending the KV cache."""
        hp, n = self.hp, len(ids)
        raw, etype, cols = self.store.embedding_rows(ids)
        x = rows_of(raw, etype, (n, cols), np.arange(n))                       # (n, d) token embeddings
        pos, t = np.arange(pos0, pos0 + n), pos0 + n
        group, kvh, hd = hp.n_head // hp.n_head_kv, hp.n_head_kv, hp.head_dim
        cos, sin = rope_tables(pos, hd, hp.rope_base, self.rope_factors)
        neox = ARCHES[hp.arch]
        mask = np.where(pos[:, None] >= np.arange(t)[None, :], np.float32(0), np.float32(-np.inf))  # causal (n, t)
        for i in range(hp.n_layer):
            unit, p = f"blk.{i}", f"blk.{i}."
            w = self.store.get(unit)
            block = self._fused(w, p)                                          # ggml: 2 graphs for the block
            if block is not None:
                q, k, v = (self._bias(w, p + m + ".weight", y) for m, y in zip(("attn_q", "attn_k", "attn_v"),
                                                                               block.head(x)))
            else:
                h = rms_norm(x, w[p + "attn_norm.weight"].view(np.float32), hp.eps)
                q, k, v = (self._mv(w, unit, p + m + ".weight", h) for m in ("attn_q", "attn_k", "attn_v"))
            q, k, v = q.reshape(n, hp.n_head, hd), k.reshape(n, kvh, hd), v.reshape(n, kvh, hd)
            q, k = rope(q, cos, sin, neox), rope(k, cos, sin, neox)
            self.k_cache[i, :, pos0:t], self.v_cache[i, :, pos0:t] = k.transpose(1, 0, 2), v.transpose(1, 0, 2)
            # grouped-query attention without repeating K/V: the query heads that share a KV head as rows
            qg = f16(q).reshape(n, kvh, group, hd).transpose(1, 2, 0, 3).reshape(kvh, group * n, hd)
            K, V = self.k_cache[i, :, :t].astype(np.float32), self.v_cache[i, :, :t].astype(np.float32)
            s = (qg @ K.transpose(0, 2, 1)) / np.float32(np.sqrt(hd))                       # (kvh, group*n, t)
            s = s.reshape(kvh, group, n, t) + mask                                           # llama.cpp's fp16 KV cache
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
            x = x + self._mv(w, unit, p + "attn_output.weight", att)
            h = rms_norm(x, w[p + "ffn_norm.weight"].view(np.float32), hp.eps)
            gate = self._mv(w, unit, p + "ffn_gate.weight", h)
            act = gate / (1 + np.exp(-gate)) * self._mv(w, unit, p + "ffn_up.weight", h)   # SwiGLU
            if self.on_ffn_activation is not None:
                self.on_ffn_activation(i, act)
            x = x + self._mv(w, unit, p + "ffn_down.weight", act)
            self.store.done(unit)
        h = rms_norm(x, self.pinned["output_norm.weight"], hp.eps)
        logits = np.empty((n, hp.n_vocab), np.float32)
        for u in self.store.units:                                             # the output matrix, chunk by chunk
            if u.rows is not None:
                w = self.store.get(u.name)
                logits[:, u.rows[0]:u.rows[1]] = w[u.tensors[0].name](h)
                self.store.done(u.name)
        return logits


class EdgeLlmSession(Session):
    """GGUF models run by the edge engine; ``memory_budget`` streams weights (``FlashWeights``)."""

    def __init__(self, path: Path, n_ctx: int = 512, memory_budget=None, drop_cache: bool = True,
                 prefetch: bool = True, kernels: str = "ort", naive: bool = False, threads: int = 1) -> None:
        info = read_gguf_info(path, arrays=("tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                                            "tokenizer.ggml.merges", "tokenizer.ggml.scores"))
        arch = info.metadata.get("general.architecture")
        if arch not in ARCHES:  # the architecture first: a Gemma file must not be refused for its tokenizer
            raise ModelFormatError(f"{path.name} is a '{arch}' model; the edge engine runs {', '.join(ARCHES)} "
                                   "(use backend='llama.cpp' for it)")
        self.tokenizer = tokenizer_from_gguf(info.metadata)
        self.hp = HParams.from_gguf(info.metadata, len(self.tokenizer.tokens), n_ctx)
        if kernels == "ggml":
            from .ggml_kernels import SUPPORTED as matrix_types
        else:
            matrix_types = MATRIX_TYPES
        self.hp.check_tensors(tensor_refs(info), path, matrix_types)
        self.kernels, self.threads = kernels, threads
        if memory_budget is None:
            self.store: WeightStore = ResidentWeights(path, info, kernels, threads)
        else:
            from .memory import parse_budget

            self.store = FlashWeights(path, info, parse_budget(memory_budget), drop_cache=drop_cache, prefetch=prefetch,
                                      kernels=kernels, naive=naive, threads=threads)
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
