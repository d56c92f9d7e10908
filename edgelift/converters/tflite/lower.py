"""ONNX -> TFLite lowering: a registry of one function per ONNX op, and the layout bookkeeping.

Convolution nets run NHWC in TFLite. Every 4-D activation produced by a spatial op is kept in
NHWC; layout-agnostic ops (activations, elementwise with constants, concat with a remapped axis)
keep it; ops that need the ONNX (NCHW) order get a TRANSPOSE back only where the data order
really differs. Model inputs/outputs keep the source layout unless ``nhwc_io`` is set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ...errors import ConversionError, UnsupportedOperatorError
from ..graph import Graph, Node, describe_nodes
from .builder import TFLiteBuilder

TO_NHWC = (0, 2, 3, 1)
TO_NCHW = (0, 3, 1, 2)
NCHW_AXIS_IN_NHWC = (0, 3, 1, 2)  # NCHW axis a lives at NHWC axis NCHW_AXIS_IN_NHWC[a]


class Unsupported(Exception):
    """Raised by a lowering for attribute combinations it cannot express (the op type is known)."""


@dataclass(frozen=True)
class Lowering:
    op_type: str
    fn: Callable[["LoweringContext", Node], None]


LOWERINGS: dict[str, Lowering] = {}


def lowering(*op_types: str):
    def deco(fn):
        for op in op_types:
            if op in LOWERINGS:
                raise ValueError(f"a TFLite lowering for '{op}' is already registered")
            LOWERINGS[op] = Lowering(op, fn)
        return fn

    return deco


@dataclass
class LoweringContext:
    graph: Graph
    builder: TFLiteBuilder
    weights: str = "fp32"  # weight storage: "fp32", "fp16" (+ DEQUANTIZE), "int8" / "int4" (hybrid kernels)
    tensors: dict[str, int] = field(default_factory=dict)  # onnx name -> tflite tensor (stored layout)
    nhwc: set[str] = field(default_factory=set)  # onnx names stored NHWC
    views: dict[tuple[str, str], int] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)  # fused/identity outputs -> their source
    skip: set[str] = field(default_factory=set)  # node names absorbed by a fusion
    ranges: dict[str, tuple[float, float]] | None = None  # calibrated ranges: full-integer int8 mode
    float_island: bool = False  # in an int8 model, the node being lowered runs in float
    float_nodes: list[str] = field(default_factory=list)  # op types that ran as float islands
    resizable: bool = False  # input dims stay resizable: sizes derived from them are computed, not constants

    @property
    def int8(self) -> bool:
        """Whether the node being lowered computes in int8."""
        return self.ranges is not None and not self.float_island

    def qparams(self, name: str) -> tuple[float, int]:
        """Asymmetric int8 (scale, zero point) from the calibrated range of ``name`` — or, when a
        fused activation took over its output, of that activation's output."""
        name = self.resolve(name)
        src = next((a for a, b in self.aliases.items() if b == name and a in self.ranges), name)
        if src not in self.ranges:
            raise Unsupported(f"no calibration range for tensor '{name}'")
        return affine_int8(*self.ranges[src])

    # -- tensors --

    def resolve(self, name: str) -> str:
        while name in self.aliases:
            name = self.aliases[name]
        return name

    def is_const(self, name: str) -> bool:
        return self.resolve(name) in self.graph.constants

    def const_value(self, name: str) -> np.ndarray:
        return self.graph.constants[self.resolve(name)]

    def shape(self, name: str) -> tuple[int, ...]:
        return self.graph.shape(self.resolve(name))

    def constant(self, name: str, value: np.ndarray, *, weight: bool = False, channel_axis: int | None = None,
                 int4_ok: bool = False) -> int:
        """A constant tensor. Weights follow ``self.weights``: fp16 + DEQUANTIZE; or int8 per-channel
        symmetric along ``channel_axis`` for ops with hybrid kernels (they pass the axis); other
        constants, biases included, stay fp32."""
        value = np.ascontiguousarray(value)
        if value.dtype == np.float64:
            value = value.astype(np.float32)
        if value.dtype == np.int64:
            value = value.astype(np.int32)
        if self.weights == "int4" and int4_ok and channel_axis is not None and value.dtype == np.float32:
            q, scales = quantize_per_channel(value, channel_axis, bits=4)
            return self.builder.constant_int4(name, q, scales=scales, quantized_dimension=channel_axis)
        if (self.weights in ("int8", "int4") or self.int8) and channel_axis is not None \
                and value.dtype == np.float32 and value.ndim >= 2:
            q, scales = quantize_per_channel(value, channel_axis)
            return self.builder.constant(name, q, scales=scales, zero_points=np.zeros_like(scales, np.int64),
                                         quantized_dimension=channel_axis)
        if self.weights == "fp16" and weight and value.dtype == np.float32:
            half = self.builder.constant(f"{name}_fp16", value.astype(np.float16))
            out = self.builder.tensor(name, value.shape)
            self.builder.op("DEQUANTIZE", [half], [out])
            return out
        return self.builder.constant(name, value)

    def get(self, name: str, layout: str = "nchw") -> int:
        """The tflite tensor for ``name`` in ``layout`` ("nchw" = the ONNX order, or "nhwc")."""
        name = self.resolve(name)
        if name in self.graph.constants:
            value = self.graph.constants[name]
            if layout == "nhwc" and value.ndim == 4:
                value = value.transpose(TO_NHWC)
            key = (name, f"const-{layout}-{'int8' if self.int8 else 'float'}")
            if key not in self.views:
                cname = name if layout == "nchw" else f"{name}_nhwc"
                if self.int8 and value.dtype == np.float32:
                    self.views[key] = self.quantized_constant(cname, value)
                else:
                    self.views[key] = self.constant(cname, value)
            return self.views[key]
        stored = "nhwc" if name in self.nhwc else "nchw"
        if stored == layout or len(self.shape(name)) != 4:
            return self._dtype_view(name, self.tensors[name], stored)
        key = (name, layout)
        if key not in self.views:
            shape = self.shape(name)
            n, c, h, w = shape
            if h == 1 and w == 1:  # same bytes in both orders: a reshape, not a transpose
                out = self.builder.like(f"{name}_{layout}", (n, c, 1, 1) if layout == "nchw" else (n, 1, 1, c),
                                        self.tensors[name])
                self.builder.op("RESHAPE", [self.tensors[name],
                                            self.constant(f"{name}_{layout}_shape",
                                                          np.array(self.builder.tensors[out].shape, np.int32))], [out])
            else:
                perm = TO_NHWC if layout == "nhwc" else TO_NCHW
                out = self.builder.like(f"{name}_{layout}", tuple(np.array(shape)[list(TO_NHWC)])
                                        if layout == "nhwc" else shape, self.tensors[name])
                self.builder.op("TRANSPOSE", [self.tensors[name], self.constant(f"perm_{layout}", np.array(perm, np.int32))],
                                [out])
            self.views[key] = out
        return self._dtype_view(name, self.views[key], layout)

    def _dtype_view(self, name: str, idx: int, layout: str) -> int:
        """In an int8 model: QUANTIZE a float tensor for an int8 node, DEQUANTIZE an int8 one for a float island."""
        if self.ranges is None:
            return idx
        t = self.builder.tensors[idx]
        if self.int8 and t.dtype == "float32":
            key, op = (name, layout, "int8"), "QUANTIZE"
        elif not self.int8 and t.dtype == "int8":
            key, op = (name, layout, "float"), "DEQUANTIZE"
        else:
            return idx
        if key not in self.views:
            if op == "QUANTIZE":
                scale, zp = self.qparams(name)
                out = self.builder.tensor(f"{t.name}_q", t.shape, "int8", scales=[scale], zero_points=[zp])
            else:
                out = self.builder.tensor(f"{t.name}_f", t.shape)
            self.builder.op(op, [idx], [out])
            self.views[key] = out
        return self.views[key]

    def dtype(self, name: str) -> str:
        dt = self.graph.dtypes.get(self.resolve(name), np.dtype(np.float32))
        return "float32" if dt == np.float64 else dt.name

    def output(self, name: str, layout: str = "nchw", dtype: str | None = None, *, same_as: int | None = None) -> int:
        """Create the tflite tensor for ONNX output ``name`` (its ONNX dtype unless given), in ``layout``.

        In full-integer mode float tensors become int8 with calibrated parameters, or with those of
        tflite tensor ``same_as`` for ops whose int8 kernels need equal input/output quantization.
        """
        dtype = dtype or self.dtype(name)
        shape = self.shape(name)
        if layout == "nhwc":
            if len(shape) != 4:
                layout = "nchw"
            else:
                shape = tuple(np.array(shape)[list(TO_NHWC)])
                self.nhwc.add(name)
        if self.int8 and dtype == "float32":
            if same_as is not None:
                idx = self.builder.like(name, shape, same_as)
            else:
                scale, zp = self.qparams(name)
                idx = self.builder.tensor(name, shape, "int8", scales=[scale], zero_points=[zp])
        else:
            idx = self.builder.tensor(name, shape, dtype)
        self.tensors[name] = idx
        return idx

    def quantized_constant(self, name: str, value: np.ndarray) -> int:
        """A float constant as per-tensor asymmetric int8 (elementwise operands in int8 mode)."""
        scale, zp = affine_int8(float(value.min()), float(value.max()))
        q = np.clip(np.round(value / scale) + zp, -128, 127).astype(np.int8)
        return self.builder.constant(name, q, scales=[scale], zero_points=[zp])

    def scale_of(self, tensor: int) -> float:
        return self.builder.tensors[tensor].scales[0]

    def layout_of(self, name: str) -> str:
        return "nhwc" if self.resolve(name) in self.nhwc else "nchw"

    def consumers(self, name: str) -> list[Node]:
        return [n for n in self.graph.nodes if name in n.inputs]


def affine_int8(lo: float, hi: float) -> tuple[float, int]:
    """TFLite int8 activation parameters for the range [lo, hi] (widened to include 0)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255.0 or 1e-8
    return float(scale), int(np.clip(round(-128 - lo / scale), -128, 127))


def quantize_per_channel(w: np.ndarray, axis: int, bits: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per channel along ``axis``: q = round(w / s), s = max|w| / qmax (1 for all-zero),
    qmax = 127 for int8, 7 for int4 (values -8..7 stored in int8 until packed)."""
    qmax = 2 ** (bits - 1) - 1
    reduce = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.max(np.abs(w), axis=reduce)
    scales = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.round(w / scales.reshape(shape)), -qmax - 1 if bits == 4 else -qmax, qmax).astype(np.int8)
    return q, scales


# ONNX ops with int8 lowerings; in an int8 model the others run in float between DEQUANTIZE and
# QUANTIZE ("float islands"), as do int8 lowerings that refuse a node's attributes.
INT8_OPS = {"Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "ReduceMean", "Relu", "Clip", "Add", "Sub", "Mul",
            "Gemm", "MatMul", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity", "Dropout",
            "HardSwish", "LeakyRelu"}


def unsupported_nodes(graph: Graph) -> list[tuple[str, str]]:
    return [(n.name, n.op_type) for n in graph.nodes if n.op_type not in LOWERINGS or n.domain not in ("", "ai.onnx")]


def check_supported(graph: Graph) -> None:
    """Every node without a TFLite lowering, listed in one error, before anything is built or run."""
    from . import ops  # noqa: F401  (registers the lowerings)

    missing = unsupported_nodes(graph)
    if missing:
        raise UnsupportedOperatorError(describe_nodes(missing, "has no TFLite lowering"), nodes=missing)


def lower(graph: Graph, **options) -> bytes:
    """Lower ``graph`` to TFLite flatbuffer bytes (see :func:`lower_builder` for the options)."""
    return lower_builder(graph, **options).finish()


def lower_builder(graph: Graph, *, weights: str = "fp32", nhwc_io: bool = False, description: str = "edgelift",
                  ranges: dict[str, tuple[float, float]] | None = None, int8_io: bool = False,
                  float_ops: list[str] | None = None, keep_float: frozenset[str] = frozenset(),
                  resizable: bool = False) -> TFLiteBuilder:
    """Lower ``graph`` to a TFLite model, not yet serialized; every unsupported node is listed in one error.

    With ``ranges`` (calibrated min/max per tensor) the model is full-integer int8: int8 activations,
    per-channel int8 weights, int32 biases; float inputs/outputs get QUANTIZE/DEQUANTIZE at the
    ends unless ``int8_io``. Ops without an int8 lowering run in float between DEQUANTIZE and
    QUANTIZE; their types are appended to ``float_ops``. Nodes named in ``keep_float`` run in float too
    (accuracy-aware mixed precision: the nodes the int8 artifact was most wrong at).
    """
    from . import ops  # noqa: F401  (registers the lowerings)

    check_supported(graph)
    ctx = LoweringContext(graph, TFLiteBuilder(description), weights, ranges=ranges, resizable=resizable)
    for name in graph.inputs:
        dtype = graph.dtypes[name].name
        layout = "nhwc" if nhwc_io and len(graph.shape(name)) == 4 else "nchw"
        if ctx.int8 and dtype == "float32" and not int8_io:
            shape = graph.shape(name)
            shape = tuple(np.array(shape)[list(TO_NHWC)]) if layout == "nhwc" else shape
            f = ctx.builder.tensor(name, shape)
            ctx.builder.inputs.append(f)
            q = ctx.output(name, layout)
            ctx.builder.tensors[q].name = f"{name}_int8"
            ctx.builder.op("QUANTIZE", [f], [q])
        else:
            ctx.builder.inputs.append(ctx.output(name, layout, dtype))
    failed = []
    poisoned: set[str] = set()  # outputs of failed nodes: their consumers are not reported again
    for node in graph.nodes:
        if node.name in ctx.skip:
            continue
        if poisoned.intersection(node.inputs):
            poisoned.update(node.outputs)
            continue
        ctx.float_island = ranges is not None and (node.op_type not in INT8_OPS or node.name in keep_float)
        mark = (len(ctx.builder.ops), len(ctx.builder.tensors))
        try:
            LOWERINGS[node.op_type].fn(ctx, node)
        except Unsupported as e:
            if ctx.int8 and mark == (len(ctx.builder.ops), len(ctx.builder.tensors)):
                ctx.float_island = True  # refused before emitting anything: run it in float
                try:
                    LOWERINGS[node.op_type].fn(ctx, node)
                except Unsupported as e2:
                    failed.append((node.name, f"{node.op_type} ({e2})"))
                    poisoned.update(node.outputs)
            else:
                failed.append((node.name, f"{node.op_type} ({e})"))
                poisoned.update(node.outputs)
        except (KeyError, ValueError, TypeError, IndexError, ConversionError) as e:
            # a pattern this lowering does not handle yet (e.g. a tensor layout it did not expect): the node is
            # named, the user gets one line, nothing is written
            failed.append((node.name, f"{node.op_type} (not lowered: {type(e).__name__} {' '.join(str(e).split())[:80]})"))
            poisoned.update(node.outputs)
        if ctx.float_island and ranges is not None:
            ctx.float_nodes.append(node.op_type)
    ctx.float_island = False
    if failed:
        raise UnsupportedOperatorError(describe_nodes(failed, "cannot be lowered to TFLite"), nodes=failed)
    ctx.float_island = ranges is not None and not int8_io  # float outputs: DEQUANTIZE int8 results
    for name in graph.outputs:
        ctx.builder.outputs.append(_named_output(ctx, name, "nhwc" if nhwc_io else "nchw"))
    ctx.float_island = False
    if float_ops is not None:
        float_ops.extend(ctx.float_nodes)
    return ctx.builder


def _named_output(ctx: LoweringContext, name: str, layout: str) -> int:
    idx = ctx.get(name, layout)
    stored = ctx.tensors[ctx.resolve(name)]
    if idx != stored:  # a layout view: it takes the ONNX name, the stored tensor gets a suffix
        ctx.builder.tensors[stored].name = f"{name}_{ctx.layout_of(name)}"
    ctx.builder.tensors[idx].name = name  # outputs keep their ONNX names
    return idx


