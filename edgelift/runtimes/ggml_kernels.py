"""llama.cpp's own CPU matrix kernels (ggml), called on the GGUF bytes the weight store holds.

A GGUF tensor's bytes *are* ggml's in-memory layout, so ggml's ``mul_mat`` can multiply them where
they lie: no repacking, no second copy of the weights, the K-quant kernels llama.cpp ships (AVX2 /
NEON), and ggml's OpenMP threads — ``threads`` is honoured. That is what streamed weights need: a
block read from storage is computed on as read.

The library is the one the ``llama`` extra (llama-cpp-python) installs beside ``libllama``; it is
loaded with ctypes, without importing llama_cpp. Only stable entry points are used (``ggml_init``,
``ggml_new_tensor_2d``, ``ggml_mul_mat``, ``ggml_graph_plan``/``ggml_graph_compute``), and the two
struct details we depend on are checked when the library loads: the offset of a tensor's ``data``
pointer is found by allocating a tensor and searching for ``ggml_get_data``'s answer, and a small
matrix product is compared with numpy. Anything unexpected disables these kernels (``available()``
says why) and the engine falls back to ONNX Runtime / numpy kernels.
"""

from __future__ import annotations

import ctypes
import importlib.util
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..core.gguf import GGML_TYPES

GGML_TYPE_IDS = {name: tid for tid, (name, _, _) in GGML_TYPES.items()}
# Types with a CPU mul_mat in every ggml build the llama extra ships (and that the engine's checks allow).
SUPPORTED = ("F32", "F16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
F32 = 0
_P = ctypes.c_void_p


class _InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


class _CPlan(ctypes.Structure):
    """ggml_cplan's first two fields (stable since 2023); the rest is opaque and larger than any version's."""

    _fields_ = [("work_size", ctypes.c_size_t), ("work_data", ctypes.c_void_p), ("_rest", ctypes.c_byte * 256)]


_LOG_FN = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_LOG_CALLBACK: list = [None]


class _Ggml:
    def __init__(self, lib_dir: Path) -> None:
        self.base = ctypes.CDLL(str(lib_dir / "libggml-base.so"), mode=ctypes.RTLD_GLOBAL)
        self.cpu = ctypes.CDLL(str(lib_dir / "libggml-cpu.so"), mode=ctypes.RTLD_GLOBAL)
        b, c = self.base, self.cpu
        for fn, args, res in ((b.ggml_init, [_InitParams], _P), (b.ggml_free, [_P], None),
                              (b.ggml_new_tensor_2d, [_P, ctypes.c_int, ctypes.c_int64, ctypes.c_int64], _P),
                              (b.ggml_mul_mat, [_P, _P, _P], _P), (b.ggml_new_graph, [_P], _P),
                              (b.ggml_build_forward_expand, [_P, _P], None), (b.ggml_get_data, [_P], _P),
                              (b.ggml_tensor_overhead, [], ctypes.c_size_t), (b.ggml_graph_overhead, [], ctypes.c_size_t),
                              (b.ggml_new_tensor_1d, [_P, ctypes.c_int, ctypes.c_int64], _P),
                              (b.ggml_nbytes, [_P], ctypes.c_size_t),
                              (b.ggml_rms_norm, [_P, _P, ctypes.c_float], _P), (b.ggml_mul, [_P, _P, _P], _P),
                              (b.ggml_add, [_P, _P, _P], _P), (b.ggml_silu, [_P, _P], _P),
                              (b.ggml_gelu, [_P, _P], _P),
                              (b.ggml_quantize_chunk, [ctypes.c_int, _P, _P, ctypes.c_int64, ctypes.c_int64,
                                                       ctypes.c_int64, _P], ctypes.c_size_t),
                              (b.ggml_quantize_init, [ctypes.c_int], None),
                              (b.ggml_quantize_requires_imatrix, [ctypes.c_int], ctypes.c_bool),
                              (b.ggml_row_size, [ctypes.c_int, ctypes.c_int64], ctypes.c_size_t),
                              (c.ggml_graph_plan, [_P, ctypes.c_int, _P], _CPlan),
                              (c.ggml_graph_compute, [_P, ctypes.POINTER(_CPlan)], ctypes.c_int)):
            fn.argtypes, fn.restype = args, res
        if hasattr(c, "ggml_cpu_init"):
            c.ggml_cpu_init()
        self._quiet_logs()
        self.cpu_dev, self.repack_buft = self._find_repack()
        self.data_offset = self._find_data_offset()
        self.lock = threading.Lock()  # one graph at a time: ggml's OpenMP team is shared
        self._graph_bytes, self._tensor_bytes = int(b.ggml_graph_overhead()), int(b.ggml_tensor_overhead())
        self._arena = np.empty(0, np.uint8)  # the context's memory (tensor and graph headers only)
        self._work = np.empty(1, np.uint8)  # ggml's scratch (the activations quantized to the weights' blocks)

    def _quiet_logs(self) -> None:
        """ggml's default logger prints every debug line (one per repacked tensor) to stderr: keep warnings
        and errors only. (llama-cpp-python installs its own logger when it loads a model.)"""
        if not hasattr(self.base, "ggml_log_set") or _LOG_CALLBACK[0] is not None:
            return
        import sys

        @_LOG_FN
        def log(level, text, _user):
            if level >= 3 and text:  # GGML_LOG_LEVEL_WARN, ERROR (CONT lines follow a kept one rarely: dropped)
                sys.stderr.write(text.decode("utf-8", "replace"))

        _LOG_CALLBACK[0] = log  # referenced for as long as ggml may call it
        self.base.ggml_log_set.argtypes = [_LOG_FN, _P]
        self.base.ggml_log_set(log, None)

    def _find_repack(self):
        """(the CPU device, its CPU_REPACK buffer type or None): asked through ggml's backend registry, as
        llama.cpp finds the 'extra' buffer types its weights go to."""
        b, c = self.base, self.cpu
        try:
            for fn, args, res in ((c.ggml_backend_cpu_reg, [], _P), (b.ggml_backend_reg_dev_get, [_P, ctypes.c_size_t], _P),
                                  (b.ggml_backend_reg_get_proc_address, [_P, ctypes.c_char_p], _P),
                                  (b.ggml_backend_buft_name, [_P], ctypes.c_char_p),
                                  (b.ggml_backend_buft_get_alloc_size, [_P, _P], ctypes.c_size_t),
                                  (b.ggml_backend_buft_alloc_buffer, [_P, ctypes.c_size_t], _P),
                                  (b.ggml_backend_buffer_get_base, [_P], _P), (b.ggml_backend_buffer_free, [_P], None),
                                  (b.ggml_backend_tensor_alloc, [_P, _P, _P], ctypes.c_int),
                                  (b.ggml_backend_tensor_set, [_P, _P, ctypes.c_size_t, ctypes.c_size_t], None),
                                  (b.ggml_backend_dev_supports_op, [_P, _P], ctypes.c_bool)):
                fn.argtypes, fn.restype = args, res
        except AttributeError:
            return None, None
        reg = c.ggml_backend_cpu_reg()
        dev = b.ggml_backend_reg_dev_get(reg, 0) if reg else None
        addr = b.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_dev_get_extra_bufts") if reg else None
        if not dev or not addr:
            return dev, None
        bufts = ctypes.CFUNCTYPE(ctypes.POINTER(_P), _P)(addr)(dev)
        i = 0
        while bufts and bufts[i]:
            if b.ggml_backend_buft_name(bufts[i]) == b"CPU_REPACK":
                return dev, bufts[i]
            i += 1
        return dev, None

    def _find_data_offset(self) -> int:
        ctx = self.base.ggml_init(_InitParams(1 << 16, None, False))
        if not ctx:
            raise OSError("ggml_init failed")
        try:
            t = self.base.ggml_new_tensor_2d(ctx, F32, 16, 4)
            data = self.base.ggml_get_data(t)
            # the struct lies between the tensor's address and its data (allocated right after it in the
            # context): scan only there, never the uninitialized data, which may hold any old pointer
            n_words = min(128, max(0, (data - t) // 8))
            words = (ctypes.c_uint64 * n_words).from_address(t)
            hits = [i * 8 for i in range(n_words) if words[i] == data]
        finally:
            self.base.ggml_free(ctx)
        if len(hits) != 1:
            raise OSError(f"cannot locate ggml_tensor.data ({len(hits)} candidates)")
        return hits[0]

    def mul_mats(self, mats: list[tuple[np.ndarray, str, tuple[int, int]]], x: np.ndarray,
                 threads: int) -> list[np.ndarray]:
        """``x @ W.T`` for each (raw GGUF bytes, type, (rows, cols)) in one graph: x is (n, cols) float32."""
        n, cols = x.shape
        outs = [np.empty((n, shape[0]), np.float32) for _, _, shape in mats]

        def build(g: _Builder) -> None:
            b = g.matrix(x, "F32", n, cols)
            for (raw, kind, (rows, k)), out in zip(mats, outs):
                g.op("mul_mat", g.matrix(raw, kind, rows, k), b, out=out)

        self.compute(build, 2 * len(mats) + 1, threads)
        return outs

    def compute(self, build, n_tensors: int, threads: int) -> None:
        """Run the graph ``build(g)`` makes with a :class:`_Builder` (at most ``n_tensors`` tensors): inputs
        and weights point at numpy memory, intermediates get numpy buffers, outputs land in given arrays."""
        mem = self._graph_bytes + n_tensors * self._tensor_bytes + 256
        with self.lock:
            if self._arena.nbytes < mem:
                self._arena = np.empty(mem, np.uint8)
            ctx = self.base.ggml_init(_InitParams(self._arena.nbytes, self._arena.ctypes.data, True))
            try:
                g = _Builder(self, ctx)
                build(g)
                plan = self.cpu.ggml_graph_plan(g.graph, int(threads), None)
                if self._work.nbytes < plan.work_size:
                    self._work = np.empty(int(plan.work_size), np.uint8)
                plan.work_data = self._work.ctypes.data
                status = self.cpu.ggml_graph_compute(g.graph, ctypes.byref(plan))
            finally:
                self.base.ggml_free(ctx)
        if status != 0:
            raise RuntimeError(f"ggml_graph_compute failed (status {status})")


class _Builder:
    """Tensors of one graph. Every tensor's data is numpy memory we hold until the graph has run: the
    context is created with no_alloc, so nothing is left for ggml to allocate (or to leave NULL)."""

    def __init__(self, lib: _Ggml, ctx) -> None:
        self.lib, self.ctx, self.keep = lib, ctx, []
        self.graph = lib.base.ggml_new_graph(ctx)

    def _point(self, t, arr: np.ndarray):
        _P.from_address(t + self.lib.data_offset).value = arr.ctypes.data
        self.keep.append(arr)
        return t

    def matrix(self, arr, kind: str, rows: int, cols: int):
        """A (rows, cols) operand: GGUF bytes of ``kind``, a :class:`Repacked` weight (its own tensor, in
        ggml's repack buffer), or float32 activations (n, cols)."""
        if isinstance(arr, Repacked):
            self.keep.append(arr)
            return arr.tensor
        return self._point(self.lib.base.ggml_new_tensor_2d(self.ctx, GGML_TYPE_IDS[kind], cols, rows), arr)

    def vector(self, arr: np.ndarray):
        return self._point(self.lib.base.ggml_new_tensor_1d(self.ctx, F32, arr.shape[-1]), arr)

    def op(self, name: str, *args, out: np.ndarray | None = None):
        """A ggml op (mul_mat, add, mul, silu, gelu, rms_norm). Its result goes to a fresh numpy buffer, or, as
        an output of the graph, to ``out`` (float32, the result's size): the graph computes up to it."""
        t = getattr(self.lib.base, f"ggml_{name}")(self.ctx, *args)
        nbytes = int(self.lib.base.ggml_nbytes(t))
        if out is None:
            return self._point(t, np.empty(nbytes, np.uint8))
        if out.nbytes != nbytes:
            raise RuntimeError("ggml output size mismatch")
        self._point(t, out)
        self.lib.base.ggml_build_forward_expand(self.graph, t)
        return t


def _lib_dir() -> Path | None:
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(next(iter(spec.submodule_search_locations))) / "lib"
    return d if (d / "libggml-cpu.so").exists() and (d / "libggml-base.so").exists() else None


@lru_cache(maxsize=1)
def _load() -> tuple[_Ggml | None, str | None]:
    lib_dir = _lib_dir()
    if lib_dir is None:
        return None, "llama-cpp-python's ggml libraries are not installed (add the llama extra)"
    try:
        g = _Ggml(lib_dir)
        rng = np.random.default_rng(0)
        w, x = rng.standard_normal((8, 32)).astype(np.float32), rng.standard_normal((2, 32)).astype(np.float32)
        (y,) = g.mul_mats([(w.view(np.uint8).reshape(-1), "F32", (8, 32))], x, 1)
        if not np.allclose(y, x @ w.T, rtol=1e-4, atol=1e-4):
            return None, "the ggml self-check gave a wrong product (unexpected library version)"
        return g, None
    except (OSError, AttributeError, RuntimeError) as e:
        return None, f"ggml could not be loaded ({e})"


class Repacked:
    """A weight matrix moved into ggml's ``CPU_REPACK`` buffer: llama.cpp's interleaved layout (Q4_0 as
    8x8 blocks on AVX2, 4x8 on NEON with i8mm, Q4_K ...) that its fastest CPU GEMV/GEMM kernels read — what
    llama.cpp does to every weight it can at load. The buffer replaces the GGUF bytes (the same size), so
    the weights are still held once. ``nbytes``: the buffer's size."""

    def __init__(self, lib: "_Ggml", ctx, tensor, buffer, nbytes: int) -> None:
        self.lib, self.ctx, self.tensor, self.buffer, self.nbytes = lib, ctx, tensor, buffer, nbytes

    def __del__(self) -> None:
        try:
            self.lib.base.ggml_backend_buffer_free(self.buffer)
            self.lib.base.ggml_free(self.ctx)
        except Exception:  # interpreter shutdown: the library may be gone already
            pass


def repack(raw: np.ndarray, kind: str, shape: tuple[int, int]) -> Repacked | None:
    """``raw`` (GGUF bytes of a (rows, cols) matrix) in ggml's repacked layout, or None where this CPU has
    no repacked kernel for ``kind`` at this shape (ggml itself is asked, as llama.cpp asks it)."""
    g, _ = _load()
    if g is None or g.repack_buft is None or kind not in GGML_TYPE_IDS:
        return None
    b = g.base
    rows, cols = shape
    ctx = b.ggml_init(_InitParams(4 * g._tensor_bytes + 256, None, True))
    if not ctx:
        return None
    keep = False
    buffer = None
    try:
        t = b.ggml_new_tensor_2d(ctx, GGML_TYPE_IDS[kind], cols, rows)
        if int(b.ggml_nbytes(t)) != raw.nbytes:
            return None
        size = int(b.ggml_backend_buft_get_alloc_size(g.repack_buft, t))
        buffer = b.ggml_backend_buft_alloc_buffer(g.repack_buft, size)
        if not buffer or b.ggml_backend_tensor_alloc(buffer, t, b.ggml_backend_buffer_get_base(buffer)) != 0:
            return None
        probe = b.ggml_mul_mat(ctx, t, b.ggml_new_tensor_2d(ctx, F32, cols, 1))
        if not b.ggml_backend_dev_supports_op(g.cpu_dev, probe):  # no repacked kernel: leave it as it is
            return None
        raw = np.ascontiguousarray(raw)
        b.ggml_backend_tensor_set(t, raw.ctypes.data, 0, raw.nbytes)
        keep = True
        return Repacked(g, ctx, t, buffer, size)
    finally:
        if not keep:
            if buffer:
                b.ggml_backend_buffer_free(buffer)
            b.ggml_free(ctx)


QUANTIZABLE = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")


def quantize_rows(rows: np.ndarray, kind: str) -> np.ndarray | None:
    """``rows`` (float32, [n, k]) in GGML block type ``kind`` by llama.cpp's own quantizer
    (``ggml_quantize_chunk`` without an importance matrix: the code ``llama-quantize`` runs), as uint8 rows;
    None where ggml is not installed or does not quantize ``kind`` that way. Runs without the GIL, so the
    GGUF writer's threads quantize tensors in parallel."""
    g, _ = _load()
    if g is None or kind not in QUANTIZABLE:
        return None
    tid = GGML_TYPE_IDS[kind]
    b = g.base
    if b.ggml_quantize_requires_imatrix(tid):
        return None
    rows = np.ascontiguousarray(rows, np.float32)
    n, k = rows.shape
    row_bytes = int(b.ggml_row_size(tid, k))
    out = np.empty((n, row_bytes), np.uint8)
    b.ggml_quantize_init(tid)
    written = b.ggml_quantize_chunk(tid, rows.ctypes.data, out.ctypes.data, 0, n, k, None)
    if written != out.nbytes:
        raise RuntimeError(f"ggml_quantize_chunk wrote {written} bytes for {out.nbytes} ({kind}, {n}x{k})")
    return out


def available() -> str | None:
    """None when ggml's kernels can be used here, else why not (one line)."""
    return _load()[1]


def mul_mats(mats: list[tuple[np.ndarray, str, tuple[int, int]]], x: np.ndarray, threads: int) -> list[np.ndarray]:
    g, why = _load()
    if g is None:
        raise RuntimeError(why)
    return g.mul_mats(mats, np.ascontiguousarray(x, np.float32), threads)


class GgmlMatVec:
    """One matrix (its GGUF bytes, held as they are) multiplied by ggml's kernel for its type."""

    def __init__(self, raw: np.ndarray, ggml_type: str, shape: tuple[int, int], threads: int) -> None:
        self.raw, self.ggml_type, self.shape, self.threads, self.nbytes = raw, ggml_type, shape, threads, raw.nbytes

    def __call__(self, x: np.ndarray) -> np.ndarray:
        (y,) = mul_mats([(self.raw, self.ggml_type, self.shape)], np.atleast_2d(x), self.threads)
        return y[0] if np.ndim(x) == 1 else y


class GgmlBlock:
    """A transformer block's matrix work as two ggml graphs per token, instead of four kernel calls and
    numpy between them:

    - ``head(x)``: RMSNorm (ggml's, as llama.cpp) then q, k, v;
    - ``tail(x, att)``: attention output projection (+ its RMSNorm) + residual, RMSNorm, gated FFN (SwiGLU
      or GeGLU) (+ its RMSNorm), + residual.

    ``mats`` maps short names (attn_q, attn_k, attn_v, attn_output, ffn_gate, ffn_up, ffn_down) to
    (GGUF bytes, type, (rows, cols)); ``norms`` maps attn_norm / ffn_norm (and, for Gemma 2/3,
    post_attention_norm / post_ffw_norm) to float32 weights."""

    def __init__(self, mats: dict, norms: dict[str, np.ndarray], eps: float, threads: int, act: str = "silu") -> None:
        self.mats, self.norms, self.eps, self.threads, self.act = mats, norms, float(eps), threads, act

    def rows(self, name: str) -> int:
        """Rows of one of the block's matrices (``ffn_up``: the FFN width)."""
        return self.mats[name][2][0]

    def _w(self, g: _Builder, name: str):
        raw, kind, (rows, cols) = self.mats[name]
        return g.matrix(raw, kind, rows, cols)

    def _norm(self, g: _Builder, x, name: str):
        return g.op("mul", g.op("rms_norm", x, ctypes.c_float(self.eps)), g.vector(self.norms[name]))

    def head(self, x: np.ndarray) -> list[np.ndarray]:
        x = np.ascontiguousarray(x, np.float32)
        n, d = x.shape
        outs = [np.empty((n, self.mats[m][2][0]), np.float32) for m in ("attn_q", "attn_k", "attn_v")]

        def build(g: _Builder) -> None:
            h = self._norm(g, g.matrix(x, "F32", n, d), "attn_norm")
            for m, out in zip(("attn_q", "attn_k", "attn_v"), outs):
                g.op("mul_mat", self._w(g, m), h, out=out)

        _load()[0].compute(build, 16, self.threads)
        return outs

    def tail(self, x: np.ndarray, att: np.ndarray, activation: np.ndarray | None = None) -> np.ndarray:
        """``activation``, when given ((n, n_ff) float32), receives the SwiGLU output on the way."""
        x, att = np.ascontiguousarray(x, np.float32), np.ascontiguousarray(att, np.float32)
        n, d = x.shape
        out = np.empty_like(x)

        def post(g: _Builder, y, name: str):
            return self._norm(g, y, name) if name in self.norms else y

        def build(g: _Builder) -> None:
            a = g.op("mul_mat", self._w(g, "attn_output"), g.matrix(att, "F32", n, att.shape[1]))
            x1 = g.op("add", g.matrix(x, "F32", n, d), post(g, a, "post_attention_norm"))
            h = self._norm(g, x1, "ffn_norm")
            act = g.op("mul", g.op(self.act, g.op("mul_mat", self._w(g, "ffn_gate"), h)),
                       g.op("mul_mat", self._w(g, "ffn_up"), h), out=activation)
            g.op("add", x1, post(g, g.op("mul_mat", self._w(g, "ffn_down"), act), "post_ffw_norm"), out=out)

        _load()[0].compute(build, 32, self.threads)
        return out
