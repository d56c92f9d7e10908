"""How a decoder's weights are stored and multiplied, one class per quantization mode.

The modes are the ONNX quantization modes of ``converters/quantize.py`` (same names, tags and
``--block-size``/``--asymmetric`` options); here each one writes the weights of a graph being built,
tensor by tensor, instead of rewriting a finished graph, so a model larger than memory converts:

- ``none``: fp32 weights, ``MatMul``;
- ``fp16``: fp16 weights widened to fp32 once at load (a ``Cast`` ONNX Runtime folds), fp32 compute:
  half the file, the CPU's fast fp32 kernels;
- ``int8-dynamic``: int8 weights in blocks with one scale each, activations quantized per block at run
  time (``MatMulNBits`` at 8 bits, accuracy level 4);
- ``int4``: blocks of 32/64/128 weights with one scale each (symmetric as llama.cpp's Q4_0, or with zero
  points), ``MatMulNBits``; the embedding table (int8) is read by ``GatherBlockQuantized`` from the
  same bytes the tied output projection multiplies.

Every class has the same four methods: ``linear`` (x @ W.T + b), ``table`` (store an embedding or
output matrix once), ``gather`` (rows of a table) and ``project`` (x @ table.T, the logits).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ...errors import QuantizationError
from .writer import MS_DOMAIN, GraphWriter

ENCODINGS: dict[str, type["Encoding"]] = {}


def register_encoding(mode: str):
    def deco(cls):
        ENCODINGS[mode] = cls
        cls.mode = mode
        return cls
    return deco


@dataclass
class Table:
    """A [rows, width] matrix stored once: an embedding, the output projection, or both (tied)."""

    name: str
    rows: int
    width: int
    parts: dict  # encoding-specific initializer names (scales, zero points...)


class Encoding:
    mode = ""
    weights = ""  # for the report: what the weights are
    activations = "fp32"

    def __init__(self, g: GraphWriter, block_size: int = 32, symmetric: bool = True, accuracy_level: int = 4) -> None:
        self.g = g
        self.block_size, self.symmetric, self.accuracy_level = block_size, symmetric, accuracy_level
        self.quantized_matmuls = 0
        self.bits_used: dict[int, int] = {}  # bits -> weights stored at that width

    def linear(self, x: str, name: str, w: np.ndarray, bias: np.ndarray | None = None) -> str:
        raise NotImplementedError

    def table(self, name: str, w: np.ndarray) -> Table:
        raise NotImplementedError

    def gather(self, t: Table, ids: str) -> str:
        raise NotImplementedError

    def project(self, t: Table, x: str) -> str:
        raise NotImplementedError

    def _bias(self, y: str, name: str, bias: np.ndarray | None) -> str:
        if bias is None:
            return y
        return self.g.op1("Add", [y, self.g.weight(f"{name}.bias", bias.astype(np.float32))], f"{name}/bias")

    def _tied_gemm(self, x: str, name: str, weight: str, width: int, rows: int) -> str:
        """x [B, S, width] @ weight[rows, width].T via Gemm(transB): the table is used as stored, so an
        embedding tied to the output is held once (a MatMul would need a transposed copy)."""
        g = self.g
        flat = g.op1("Reshape", [x, g.const("rows_by_width", np.array([-1, width], np.int64))], f"{name}/flatten")
        y = g.op1("Gemm", [flat, weight], f"{name}/gemm", transB=1)
        lead = g.op1("Shape", [x], f"{name}/lead_shape", start=0, end=2)
        shape = g.op1("Concat", [lead, g.const("vocab", np.array([rows], np.int64))], f"{name}/out_shape", axis=0)
        return g.op1("Reshape", [y, shape], f"{name}/unflatten")


@register_encoding("none")
class Fp32(Encoding):
    weights = "fp32"

    def linear(self, x, name, w, bias=None):
        wt = self.g.weight(f"{name}.weight", w.T.astype(np.float32))
        return self._bias(self.g.op1("MatMul", [x, wt], name), name, bias)

    def table(self, name, w):
        return Table(self.g.weight(name, w.astype(np.float32)), w.shape[0], w.shape[1], {})

    def gather(self, t, ids):
        return self.g.op1("Gather", [t.name, ids], f"{t.name}/gather")

    def project(self, t, x):
        return self._tied_gemm(x, "lm_head", t.name, t.width, t.rows)


@register_encoding("fp16")
class Fp16(Fp32):
    weights = "fp16 (widened to fp32 at load)"

    def _widened(self, name: str, w: np.ndarray) -> str:
        return self.g.op1("Cast", [self.g.weight(name, w.astype(np.float16))], f"{name}/fp32", to=1)

    def linear(self, x, name, w, bias=None):
        wt = self._widened(f"{name}.weight", w.T)
        return self._bias(self.g.op1("MatMul", [x, wt], name), name, bias)

    def table(self, name, w):
        return Table(self._widened(name, w), w.shape[0], w.shape[1], {})


def nbit_blocks(w: np.ndarray, bits: int, block: int, symmetric: bool
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Block-wise 4- or 8-bit weights as MatMulNBits stores them: (packed uint8 [N, K/block, block*bits/8],
    low nibble first at 4 bits; scales float32 [N, K/block]; zero points uint8 [N, K/block] at 8 bits,
    [N, ceil(K/block / 2)] packed at 4, or None when symmetric: ONNX Runtime's implicit zero point is the
    middle code, 8 or 128). Symmetric 4-bit blocks are llama.cpp's Q4_0 (scale = the largest-magnitude
    value / -8, so that value is exact); symmetric 8-bit ones its Q8_0 (scale = max |w| / 127)."""
    n, k = w.shape
    b = w.reshape(n, k // block, block).astype(np.float32)
    top, mid = (1 << bits) - 1, 1 << (bits - 1)
    if symmetric and bits == 4:
        extreme = np.take_along_axis(b, np.abs(b).argmax(axis=-1)[..., None], axis=-1)[..., 0]
        scale, zp = _searched_scale(b, extreme / -8.0), np.full(b.shape[:2], mid, np.float32)
    elif symmetric:
        scale, zp = np.abs(b).max(axis=-1) / (mid - 1), np.full(b.shape[:2], mid, np.float32)
    else:
        lo, hi = np.minimum(b.min(axis=-1), 0), np.maximum(b.max(axis=-1), 0)
        scale = (hi - lo) / top
        zp = np.clip(np.rint(-lo / np.where(scale > 0, scale, 1)), 0, top)
    inv = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale != 0)
    q = np.clip(np.rint(b * inv[..., None]) + zp[..., None], 0, top).astype(np.uint8)
    zero_points = None if symmetric else zp.astype(np.uint8)
    if bits == 4:
        q = q[..., 0::2] | (q[..., 1::2] << 4)
        if zero_points is not None:
            if zero_points.shape[1] % 2:
                zero_points = np.concatenate([zero_points, np.zeros((n, 1), np.uint8)], axis=1)
            zero_points = zero_points[:, 0::2] | (zero_points[:, 1::2] << 4)
    return q, scale.astype(np.float32), zero_points


SCALE_CANDIDATES = np.linspace(0.80, 1.10, 16, dtype=np.float32)
SEARCH_ROWS = 4096  # rows per chunk of the search: bounds its memory on a large vocabulary


def _searched_scale(b: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Per block, the multiple of ``base`` (the Q4_0 scale) with the least squared rounding error: clipping
    a block's one extreme value often buys the other 31 a finer step (llama.cpp's K-quants search too)."""
    out = base.copy()
    for r in range(0, b.shape[0], SEARCH_ROWS):
        blk, d0 = b[r:r + SEARCH_ROWS], base[r:r + SEARCH_ROWS]
        best = np.full(d0.shape, np.inf, np.float32)
        for c in SCALE_CANDIDATES:
            d = d0 * c
            inv = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0)[..., None]
            err = ((blk - d[..., None] * np.clip(np.rint(blk * inv), -8, 7)) ** 2).sum(axis=-1)
            better = err < best
            best[better], out[r:r + SEARCH_ROWS][better] = err[better], d[better]
    return out


def dequantize_nbit(packed: np.ndarray, scale: np.ndarray, zero_points: np.ndarray | None, bits: int) -> np.ndarray:
    """The float weights [N, K] that ``nbit_blocks`` stands for (the reference its tests compare with)."""
    n, nb = scale.shape
    if bits == 4:
        q = np.empty((n, nb, packed.shape[-1] * 2), np.float32)
        q[..., 0::2], q[..., 1::2] = packed & 15, packed >> 4
    else:
        q = packed.astype(np.float32)
    if zero_points is None:
        zp = np.full((n, nb), 1 << (bits - 1), np.float32)
    elif bits == 4:
        zp = np.stack([zero_points & 15, zero_points >> 4], axis=-1).reshape(n, -1)[:, :nb].astype(np.float32)
    else:
        zp = zero_points.astype(np.float32)
    return ((q - zp[..., None]) * scale[..., None]).reshape(n, -1)


class NBits(Encoding):
    """Weights in blocks of ``block_size`` with one scale (and zero point) each, MatMulNBits; ``bits`` per
    tensor from ``bits_for``, so a mode can keep its most sensitive matrices at 8 bits."""

    def bits_for(self, name: str) -> int:
        raise NotImplementedError

    def _check(self, name: str, k: int) -> None:
        if self.block_size not in (32, 64, 128):
            raise QuantizationError(f"--block-size {self.block_size} unsupported; use 32, 64 or 128")
        if k % self.block_size:
            fits = [b for b in (32, 64, 128) if k % b == 0]
            raise QuantizationError(f"{name} has rows of {k} values, not a multiple of block {self.block_size}: use "
                                    f"--block-size {' or '.join(map(str, fits)) or '32'}")

    def _store(self, name: str, w: np.ndarray, bits: int, shape_2d: bool) -> tuple[str, str, str | None]:
        self._check(name, w.shape[1])
        packed, scale, zp = nbit_blocks(w, bits, self.block_size, self.symmetric)
        g = self.g
        self.bits_used[bits] = self.bits_used.get(bits, 0) + w.size
        data = g.weight(f"{name}_q{bits}", packed.reshape(w.shape[0], -1) if shape_2d else packed)
        return data, g.weight(f"{name}.scales", scale), None if zp is None else g.weight(f"{name}.zero_points", zp)

    def _nbits(self, x: str, name: str, b: str, scales: str, zp: str | None, n: int, k: int, bits: int) -> str:
        self.quantized_matmuls += 1
        inputs = [x, b, scales] + ([zp] if zp else [])
        return self.g.op1("MatMulNBits", inputs, name, domain=MS_DOMAIN, K=k, N=n, bits=bits,
                          block_size=self.block_size, accuracy_level=self.accuracy_level)

    def linear(self, x, name, w, bias=None):
        bits = self.bits_for(name)
        b, scales, zp = self._store(f"{name}.weight", w, bits, shape_2d=False)
        return self._bias(self._nbits(x, name, b, scales, zp, w.shape[0], w.shape[1], bits), name, bias)

    def table(self, name, w):
        bits = self.bits_for(name)
        data, scales, zp = self._store(name, w, bits, shape_2d=True)
        return Table(data, w.shape[0], w.shape[1], {"scales": scales, "zero_points": zp, "bits": bits})

    def gather(self, t, ids):
        zp = [t.parts["zero_points"]] if t.parts["zero_points"] else []
        return self.g.op1("GatherBlockQuantized", [t.name, ids, t.parts["scales"], *zp], f"{t.name}/gather",
                          domain=MS_DOMAIN, bits=t.parts["bits"], block_size=self.block_size, gather_axis=0,
                          quantize_axis=1)

    def project(self, t, x):
        g, bits = self.g, t.parts["bits"]
        shape = g.const("nbits_shape", np.array([t.rows, t.width // self.block_size, self.block_size * bits // 8],
                                                np.int64))
        b = g.op1("Reshape", [t.name, shape], f"{t.name}/blocks")  # the same bytes, folded once at load
        return self._nbits(x, "lm_head", b, t.parts["scales"], t.parts["zero_points"], t.rows, t.width, bits)


@register_encoding("int4")
class Int4(NBits):
    """4-bit blocks; the embedding/output table and the sensitive matrices (EIGHT_BIT) at 8 bits, as
    llama.cpp's Q4 mixes keep the output matrix at Q6_K."""

    EIGHT_BIT = re.compile(r"embed_tokens|lm_head")

    @property
    def weights(self) -> str:
        return (f"int4 block {self.block_size} " + ("symmetric (Q4_0-like)" if self.symmetric else "with zero points")
                + f", embedding/output table int8, accuracy level {self.accuracy_level}")

    def bits_for(self, name: str) -> int:
        return 8 if self.EIGHT_BIT.search(name) else 4


@register_encoding("int8-dynamic")
class Int8Dynamic(NBits):
    """8-bit blocks (llama.cpp's Q8_0), activations quantized per block at run time (accuracy level 4):
    per-block scales keep one token's outlier channels from costing every other token its precision, as a
    per-tensor dynamic scale (DynamicQuantizeMatMul) does on SmolLM2's prompts (top-1 0.57)."""

    activations = "int8 per block, quantized at run time"

    @property
    def weights(self) -> str:
        return f"int8 block {self.block_size} " + ("symmetric (Q8_0-like)" if self.symmetric else "with zero points")

    def bits_for(self, name: str) -> int:
        return 8
