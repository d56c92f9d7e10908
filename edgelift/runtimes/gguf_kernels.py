"""Matrix-vector products on GGUF quantized blocks, in numpy, one small unit per block type.

Every type is read as groups: small integer levels ``q`` (int8/uint8), a float scale per group and,
for the affine types, a float offset per group, so ``w = scale * q + offset``. A matrix-vector product
then never builds float weights: it is one integer-by-float contraction per group
(``einsum('rgk,gk->rg')``), scaled, plus offset times the group's sum of x. Decoding is per call, on
the raw GGUF bytes the weight store holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import ModelFormatError

F16 = np.float16


class Nibbles:
    """4-bit levels still packed: element j in the low nibble of byte j, element j + 16 in the high one."""

    def __init__(self, packed: np.ndarray, bias: int = 0) -> None:
        self.packed, self.bias = packed, bias
        self.shape = (*packed.shape[:-1], 32)

    def dot(self, xs: np.ndarray) -> np.ndarray:
        """Per-group sums of level * x, (n, rows, groups), from the two nibble planes (no unpacked copy)."""
        p = self.packed
        y = np.einsum("rgk,ngk->nrg", p & 15, xs[..., :16]) + np.einsum("rgk,ngk->nrg", p >> 4, xs[..., 16:])
        return y - self.bias * xs.sum(-1)[:, None, :] if self.bias else y

    def levels(self) -> np.ndarray:
        q = np.concatenate([self.packed & 15, self.packed >> 4], axis=-1)
        return q.view(np.int8) - np.int8(self.bias) if self.bias else q


@dataclass
class Groups:
    q: "np.ndarray | Nibbles"  # (rows, groups, size) int8/uint8 levels, or packed 4-bit ones
    scale: np.ndarray  # (rows, groups) float32
    offset: np.ndarray | None  # (rows, groups) float32, for affine types


KERNELS: dict[str, Callable[[np.ndarray, int], Groups]] = {}


def kernel(name: str):
    def deco(fn):
        KERNELS[name] = fn
        return fn

    return deco


def _half(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view(F16).astype(np.float32)[..., 0]


_Q4_1 = np.dtype([("d", "<f2"), ("m", "<f2"), ("qs", "u1", (16,))])
_Q4_0 = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])
_Q8_0 = np.dtype([("d", "<f2"), ("qs", "i1", (32,))])


@kernel("Q8_0")
def _q8_0(raw, rows):
    b = raw.view(_Q8_0).reshape(rows, -1)
    return Groups(b["qs"], b["d"].astype(np.float32), None)


@kernel("Q4_0")
def _q4_0(raw, rows):
    b = raw.view(_Q4_0).reshape(rows, -1)
    return Groups(Nibbles(b["qs"], bias=8), b["d"].astype(np.float32), None)


@kernel("Q4_1")
def _q4_1(raw, rows):
    b = raw.view(_Q4_1).reshape(rows, -1)
    return Groups(Nibbles(b["qs"]), b["d"].astype(np.float32), b["m"].astype(np.float32))


def _q5(b, head):
    qh = np.ascontiguousarray(b[..., head:head + 4]).view(np.uint32)[..., 0]
    bits = ((qh[..., None] >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)
    p = b[..., head + 4:]
    return np.concatenate([p & 15, p >> 4], axis=-1) | (bits << 4)


@kernel("Q5_0")
def _q5_0(raw, rows):
    b = raw.reshape(rows, -1, 22)
    return Groups(_q5(b, 2).view(np.int8) - np.int8(16), _half(b[..., :2]), None)


@kernel("Q5_1")
def _q5_1(raw, rows):
    b = raw.reshape(rows, -1, 24)
    return Groups(_q5(b, 4), _half(b[..., :2]), _half(b[..., 2:4]))


@kernel("Q4_K")
def _q4_k(raw, rows):
    b = raw.reshape(rows, -1, 144)
    d, dmin = _half(b[..., 0:2]), _half(b[..., 2:4])
    s = b[..., 4:16]
    sc = np.concatenate([s[..., 0:4] & 63, (s[..., 8:12] & 15) | ((s[..., 0:4] >> 6) << 4)], axis=-1)
    mn = np.concatenate([s[..., 4:8] & 63, (s[..., 8:12] >> 4) | ((s[..., 4:8] >> 6) << 4)], axis=-1)
    p = b[..., 16:].reshape(*b.shape[:-1], 4, 32)  # chunk c: low nibbles = sub-block 2c, high = 2c+1
    q = np.stack([p & 15, p >> 4], axis=-2).reshape(rows, -1, 32)
    nb = b.shape[1]
    scale = (d[..., None] * sc).reshape(rows, nb * 8)
    offset = -(dmin[..., None] * mn).reshape(rows, nb * 8)
    return Groups(q, scale.astype(np.float32), offset.astype(np.float32))


@kernel("Q6_K")
def _q6_k(raw, rows):
    b = raw.reshape(rows, -1, 210)
    ql = b[..., :128].reshape(*b.shape[:-1], 2, 64)
    qh = b[..., 128:192].reshape(*b.shape[:-1], 2, 32)
    sc = b[..., 192:208].view(np.int8).astype(np.float32)
    d = _half(b[..., 208:210])
    lo = np.stack([ql[..., :32] & 15, ql[..., 32:] & 15, ql[..., :32] >> 4, ql[..., 32:] >> 4], axis=-2)
    hi = np.stack([(qh >> s) & 3 for s in (0, 2, 4, 6)], axis=-2)
    q = ((lo | (hi << 4)).view(np.int8) - np.int8(32)).reshape(rows, -1, 16)  # 16 groups of 16 per block
    return Groups(q, (d[..., None] * sc).reshape(rows, -1).astype(np.float32), None)


def groups_of(raw: np.ndarray, ggml_type: str, rows: int) -> Groups:
    if ggml_type not in KERNELS:
        raise ModelFormatError(f"the edge engine cannot compute with {ggml_type} weights yet "
                               f"(supported: F32, F16, {', '.join(KERNELS)})")
    return KERNELS[ggml_type](raw, rows)


# llama.cpp quantizes the activations a quantized matrix meets (Q8_0/Q8_1 per 32 values, Q8_K per 256)
# and multiplies integers; doing the same keeps our logits on llama.cpp's, not just near them.
ACTIVATION_BLOCK = {"Q8_0": 32, "Q4_0": 32, "Q4_1": 32, "Q5_0": 32, "Q5_1": 32, "Q4_K": 256, "Q6_K": 256}


def quantize_activations(x: np.ndarray, block: int) -> np.ndarray:
    """x as llama.cpp's Q8 activation blocks see it (returned dequantized, float32)."""
    xb = x.reshape(*x.shape[:-1], -1, block)
    if block == 32:  # quantize_row_q8_0/q8_1: d = amax/127, q = roundf(x/d) (half away from zero)
        d = np.abs(xb).max(-1, keepdims=True) / np.float32(127)
        inv = np.where(d > 0, np.float32(1) / np.where(d > 0, d, 1), 0).astype(np.float32)
        v = xb * inv
        q = np.trunc(v + np.copysign(np.float32(0.5), v))
        d16 = d.astype(F16).astype(np.float32)  # the block scale is stored as fp16
        return (q * d16).reshape(x.shape).astype(np.float32)
    idx = np.abs(xb).argmax(-1)[..., None]  # quantize_row_q8_K: scale from the signed largest value
    mx = np.take_along_axis(xb, idx, -1)
    iscale = np.where(mx != 0, np.float32(-127) / np.where(mx != 0, mx, 1), 0).astype(np.float32)
    q = np.minimum(127, np.rint(iscale * xb))
    d = np.where(iscale != 0, np.float32(1) / np.where(iscale != 0, iscale, 1), 0).astype(np.float32)
    return (q * d).reshape(x.shape).astype(np.float32)


def matvec(raw: np.ndarray, ggml_type: str, shape: tuple[int, int], x: np.ndarray) -> np.ndarray:
    """``W @ x`` for the (rows, cols) matrix stored as ``raw`` GGUF bytes; x is (cols,) or (n, cols)."""
    rows, cols = shape
    if ggml_type == "F32":
        return x @ raw.view(np.float32).reshape(rows, cols).T
    if ggml_type == "F16":  # llama.cpp rounds the activations to fp16 for an fp16 matrix
        return x.astype(F16).astype(np.float32) @ raw.view(F16).reshape(rows, cols).astype(np.float32).T
    g = groups_of(raw, ggml_type, rows)
    size = g.q.shape[-1]
    x = quantize_activations(np.asarray(x, np.float32), ACTIVATION_BLOCK[ggml_type])
    xs = np.atleast_2d(x).reshape(-1, cols // size, size)
    dots = g.q.dot(xs) if isinstance(g.q, Nibbles) else np.einsum("rgk,ngk->nrg", g.q, xs, optimize=False)
    y = dots * g.scale
    if g.offset is not None:
        y += g.offset * xs.sum(-1)[:, None, :]
    out = y.sum(-1)
    return out[0] if x.ndim == 1 else out


def rows_of(raw: np.ndarray, ggml_type: str, shape: tuple[int, int], index: np.ndarray) -> np.ndarray:
    """Float rows ``index`` of the matrix (embedding lookup): only those rows are decoded."""
    rows, cols = shape
    per_row = raw.size // rows
    sel = raw.reshape(rows, per_row)[np.asarray(index)]
    if ggml_type == "F32":
        return sel.view(np.float32).reshape(len(index), cols)
    if ggml_type == "F16":
        return sel.view(F16).astype(np.float32).reshape(len(index), cols)
    g = groups_of(np.ascontiguousarray(sel).reshape(-1), ggml_type, len(index))
    q = g.q.levels() if isinstance(g.q, Nibbles) else g.q
    w = q.astype(np.float32) * g.scale[..., None]
    if g.offset is not None:
        w += g.offset[..., None]
    return w.reshape(len(index), cols)


# --- ONNX Runtime's MatMulNBits: the 4-bit / 8-bit block kernels MLAS runs with int8 activations --------

ORT_TYPES = ("Q4_0", "Q4_1", "Q8_0", "Q4_K")
ORT_THREADS = 1  # per session: 2-thread pools in hundreds of sessions spin against each other (0.4 tok/s; 40 without spinning, 49 with 1)
ACCURACY_LEVEL = 4  # MatMulNBits: int8 activations per block (4), or fp32 compute on dequantized blocks (0)


class OrtMatVec:
    """One weight matrix as a small ONNX Runtime session (MatMulNBits, block 32, accuracy_level 4:
    activations quantized to int8 per block, as llama.cpp does). Affine types (Q4_1, Q4_K) keep the
    symmetric kernel (levels - 8, the default zero point) and add ``offset + 8 * scale`` times the
    activations' block sums in the same graph."""

    def __init__(self, raw: np.ndarray, ggml_type: str, shape: tuple[int, int]) -> None:
        import onnxruntime as ort

        from ..core.onnx_proto import Node, ValueInfo, int_attribute, model_bytes, tensor_initializer

        rows, cols = shape
        g = groups_of(raw, ggml_type, rows)
        q = g.q.levels() if isinstance(g.q, Nibbles) else g.q
        size = q.shape[-1]
        bits = 8 if ggml_type == "Q8_0" else 4
        blocks = cols // 32
        if bits == 8:  # int8 levels -> uint8 with MatMulNBits' default zero point 128
            b = (q.astype(np.int16) + 128).astype(np.uint8).reshape(rows, blocks, 32)
        else:  # 4-bit levels (0..15, or -8..7 for Q4_0 with the default zero point 8): pairs 2i, 2i+1 per byte
            u = (q.astype(np.int16) + (8 if ggml_type == "Q4_0" else 0)).astype(np.uint8).reshape(rows, blocks, 32)
            b = (u[..., 0::2] | (u[..., 1::2] << 4)).astype(np.uint8)
        scale = np.repeat(g.scale, 32 // size, axis=1) if size < 32 else g.scale  # groups are 32 wide here
        inits = [tensor_initializer("B", b), tensor_initializer("scales", scale.reshape(-1).astype(np.float32))]
        inputs = ["A", "B", "scales"]
        attrs = {k: int_attribute(k, v) for k, v in (("K", cols), ("N", rows), ("bits", bits), ("block_size", 32),
                                                  ("accuracy_level", ACCURACY_LEVEL))}
        nodes = [Node("MatMulNBits", "mm", inputs, ["Y" if g.offset is None else "Yq"], "com.microsoft", attrs)]
        if g.offset is not None:  # affine types: + block sums of A times (offset + 8 * scale), in the same call
            offset = (g.offset + 8 * g.scale).astype(np.float32)
            inits += [tensor_initializer("blocks", np.array([-1, blocks, 32], np.int64)),
                      tensor_initializer("axes", np.array([-1], np.int64)),
                      tensor_initializer("offsetT", np.ascontiguousarray(offset.T))]
            nodes += [Node("Reshape", "rs", ["A", "blocks"], ["Ab"], "", {}),
                      Node("ReduceSum", "sum", ["Ab", "axes"], ["S"], "", {"keepdims": int_attribute("keepdims", 0)}),
                      Node("MatMul", "off", ["S", "offsetT"], ["Yo"], "", {}),
                      Node("Add", "add", ["Yq", "Yo"], ["Y"], "", {})]
        data = model_bytes(nodes, [ValueInfo("A", "float32", ("n", cols))], [ValueInfo("Y", "float32", ("n", rows))],
                           inits, {"": 21, "com.microsoft": 1})
        so = ort.SessionOptions()
        so.intra_op_num_threads = ORT_THREADS
        so.log_severity_level = 3
        so.enable_cpu_mem_arena = False  # hundreds of one-node sessions: no per-session arena to keep
        so.enable_mem_pattern = False
        self.session = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
        self.nbytes = raw.nbytes

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = self.session.run(None, {"A": np.atleast_2d(np.asarray(x, np.float32))})[0]
        return y[0] if np.ndim(x) == 1 else y


class NumpyMatVec:
    """The numpy path, for the types MatMulNBits cannot express exactly (Q5_x, Q6_K, F16, F32)."""

    def __init__(self, raw: np.ndarray, ggml_type: str, shape: tuple[int, int]) -> None:
        self.raw, self.ggml_type, self.shape, self.nbytes = raw, ggml_type, shape, raw.nbytes

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return matvec(self.raw, self.ggml_type, self.shape, x)


def prepare_matvec(raw: np.ndarray, ggml_type: str, shape: tuple[int, int], kernels: str = "ort", threads: int = 1):
    """The kernel for one matrix: ggml's on the bytes as they are, ONNX Runtime's MatMulNBits on a repacked
    copy (the 4/8-bit types it expresses exactly), or numpy."""
    if kernels == "ggml":
        from .ggml_kernels import SUPPORTED, GgmlMatVec

        if ggml_type in SUPPORTED:
            return GgmlMatVec(raw, ggml_type, shape, threads)
    if kernels == "ort" and ggml_type in ORT_TYPES and shape[1] % 32 == 0:
        return OrtMatVec(raw, ggml_type, shape)
    return NumpyMatVec(raw, ggml_type, shape)
