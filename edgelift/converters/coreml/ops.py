"""ONNX op -> MIL lowerings, one small function per op (see ``lower.py`` for the registry)."""

from __future__ import annotations

import numpy as np

from ..graph import Node
from .lower import MILContext, Unsupported, mil_lowering


def _mb():
    from coremltools.converters.mil import Builder as mb

    return mb


def _axes(axes, rank: int) -> list[int]:
    return [int(a) % rank for a in axes]


def _pads(node: Node, spatial: int) -> list[int]:
    """ONNX pads [b1, b2, ..., e1, e2, ...] -> MIL's [b1, e1, b2, e2, ...]."""
    if node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise Unsupported(f"auto_pad={node.attrs['auto_pad']}")
    p = list(node.attrs.get("pads", [0] * 2 * spatial))
    return [v for i in range(spatial) for v in (p[i], p[i + spatial])]


def _out(ctx: MILContext, node: Node, fn, **kw) -> None:
    ctx.set(node, fn(**kw, name=ctx.name(node.outputs[0])))


# --- convolution and pooling -------------------------------------------------------------------


@mil_lowering("Conv")
def conv(ctx: MILContext, node: Node) -> None:
    w = ctx.const(node.inputs[1])
    if w is None:
        raise Unsupported("weights must be constant")
    spatial = w.ndim - 2
    kw = dict(x=ctx.get(node.inputs[0]), weight=w.astype(np.float32),
              strides=list(node.attrs.get("strides", [1] * spatial)),
              dilations=list(node.attrs.get("dilations", [1] * spatial)),
              pad_type="custom", pad=_pads(node, spatial), groups=int(node.attrs.get("group", 1)))
    if len(node.inputs) > 2 and node.inputs[2]:
        kw["bias"] = ctx.const(node.inputs[2]).astype(np.float32)
    _out(ctx, node, _mb().conv, **kw)


@mil_lowering("ConvTranspose")
def conv_transpose(ctx: MILContext, node: Node) -> None:
    w = ctx.const(node.inputs[1])
    if w is None or node.attrs.get("output_padding") or node.attrs.get("output_shape"):
        raise Unsupported("needs constant weights and no output_padding/output_shape")
    spatial = w.ndim - 2
    kw = dict(x=ctx.get(node.inputs[0]), weight=w.astype(np.float32),
              strides=list(node.attrs.get("strides", [1] * spatial)),
              dilations=list(node.attrs.get("dilations", [1] * spatial)),
              pad_type="custom", pad=_pads(node, spatial), groups=int(node.attrs.get("group", 1)))
    # no output_shape: without output_padding MIL infers ONNX's size from strides, kernel and pads, and a
    # package with flexible input sizes must not carry the built size as a constant
    if len(node.inputs) > 2 and node.inputs[2]:
        kw["bias"] = ctx.const(node.inputs[2]).astype(np.float32)
    _out(ctx, node, _mb().conv_transpose, **kw)


@mil_lowering("MaxPool", "AveragePool")
def pool(ctx: MILContext, node: Node) -> None:
    k = list(node.attrs["kernel_shape"])
    if node.attrs.get("dilations") and any(d != 1 for d in node.attrs["dilations"]):
        raise Unsupported("dilated pooling")
    kw = dict(x=ctx.get(node.inputs[0]), kernel_sizes=k, strides=list(node.attrs.get("strides", [1] * len(k))),
              pad_type="custom", pad=_pads(node, len(k)), ceil_mode=bool(node.attrs.get("ceil_mode", 0)))
    if node.op_type == "AveragePool":
        kw["exclude_padding_from_average"] = not node.attrs.get("count_include_pad", 0)
        _out(ctx, node, _mb().avg_pool, **kw)
    else:
        _out(ctx, node, _mb().max_pool, **kw)


@mil_lowering("GlobalAveragePool", "GlobalMaxPool")
def global_pool(ctx: MILContext, node: Node) -> None:
    rank = len(ctx.shape(node.inputs[0]))
    fn = _mb().reduce_mean if node.op_type == "GlobalAveragePool" else _mb().reduce_max
    _out(ctx, node, fn, x=ctx.get(node.inputs[0]), axes=list(range(2, rank)), keep_dims=True)


@mil_lowering("BatchNormalization")
def batch_norm(ctx: MILContext, node: Node) -> None:
    scale, bias, mean, var = (ctx.const(i) for i in node.inputs[1:5])
    if any(v is None for v in (scale, bias, mean, var)):
        raise Unsupported("statistics must be constant")
    _out(ctx, node, _mb().batch_norm, x=ctx.get(node.inputs[0]), mean=mean.astype(np.float32),
         variance=var.astype(np.float32), gamma=scale.astype(np.float32), beta=bias.astype(np.float32),
         epsilon=float(node.attrs.get("epsilon", 1e-5)))


# --- dense -------------------------------------------------------------------------------------


@mil_lowering("Gemm")
def gemm(ctx: MILContext, node: Node) -> None:
    a = node.attrs
    if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
        raise Unsupported("transA/alpha/beta")
    w = ctx.const(node.inputs[1])
    if w is None:
        raise Unsupported("B must be constant")
    w = w if a.get("transB", 0) else w.T  # linear wants (out, in)
    kw = dict(x=ctx.get(node.inputs[0]), weight=np.ascontiguousarray(w, np.float32))
    if len(node.inputs) > 2 and node.inputs[2]:
        kw["bias"] = np.broadcast_to(ctx.const(node.inputs[2]), (w.shape[0],)).astype(np.float32)
    _out(ctx, node, _mb().linear, **kw)


@mil_lowering("MatMul")
def matmul(ctx: MILContext, node: Node) -> None:
    w = ctx.const(node.inputs[1])
    x_rank = len(ctx.shape(node.inputs[0]))
    if w is not None and w.ndim == 2 and 1 <= x_rank <= 3:
        _out(ctx, node, _mb().linear, x=ctx.get(node.inputs[0]), weight=np.ascontiguousarray(w.T, np.float32))
    else:
        _out(ctx, node, _mb().matmul, x=ctx.get(node.inputs[0]), y=ctx.get(node.inputs[1]))


# --- elementwise -------------------------------------------------------------------------------

_BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "real_div", "Pow": "pow", "Max": "maximum",
           "Min": "minimum", "And": "logical_and", "Or": "logical_or", "Equal": "equal", "Less": "less",
           "Greater": "greater", "LessOrEqual": "less_equal", "GreaterOrEqual": "greater_equal"}


@mil_lowering(*_BINARY)
def binary(ctx: MILContext, node: Node) -> None:
    if len(node.inputs) != 2:
        raise Unsupported("variadic form")
    x, y = ctx.get(node.inputs[0]), ctx.get(node.inputs[1])
    if node.op_type == "Div" and np.issubdtype(ctx.graph.dtypes.get(node.outputs[0], np.float32), np.integer):
        _out(ctx, node, _mb().floor_div, x=x, y=y)
        return
    _out(ctx, node, getattr(_mb(), _BINARY[node.op_type]), x=x, y=y)


_UNARY = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Exp": "exp", "Sqrt": "sqrt", "Abs": "abs",
          "Neg": None, "Erf": "erf", "Reciprocal": "inverse", "Log": "log", "Not": "logical_not",
          "Identity": "identity", "Floor": "floor", "Ceil": "ceil", "Sin": "sin", "Cos": "cos"}


@mil_lowering(*_UNARY)
def unary(ctx: MILContext, node: Node) -> None:
    x = ctx.get(node.inputs[0])
    if node.op_type == "Neg":
        _out(ctx, node, _mb().mul, x=x, y=np.float32(-1))
    else:
        _out(ctx, node, getattr(_mb(), _UNARY[node.op_type]), x=x)


@mil_lowering("Clip")
def clip(ctx: MILContext, node: Node) -> None:
    lo = ctx.const(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] else None
    hi = ctx.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    lo = np.float32(node.attrs.get("min", -3.4e38) if lo is None else lo)
    hi = np.float32(node.attrs.get("max", 3.4e38) if hi is None else hi)
    x = ctx.get(node.inputs[0])
    if lo == 0 and hi > 1e38:
        _out(ctx, node, _mb().relu, x=x)
    elif lo == 0 and hi == 6:
        _out(ctx, node, _mb().relu6, x=x)
    else:
        _out(ctx, node, _mb().clip, x=x, alpha=lo, beta=hi)


@mil_lowering("LeakyRelu")
def leaky_relu(ctx: MILContext, node: Node) -> None:
    _out(ctx, node, _mb().leaky_relu, x=ctx.get(node.inputs[0]), alpha=float(node.attrs.get("alpha", 0.01)))


@mil_lowering("HardSigmoid")
def hard_sigmoid(ctx: MILContext, node: Node) -> None:
    _out(ctx, node, _mb().sigmoid_hard, x=ctx.get(node.inputs[0]), alpha=float(node.attrs.get("alpha", 0.2)),
         beta=float(node.attrs.get("beta", 0.5)))


@mil_lowering("HardSwish")
def hard_swish(ctx: MILContext, node: Node) -> None:
    x = ctx.get(node.inputs[0])
    gate = _mb().sigmoid_hard(x=x, alpha=1 / 6, beta=0.5)
    _out(ctx, node, _mb().mul, x=x, y=gate)


@mil_lowering("Gelu")
def gelu(ctx: MILContext, node: Node) -> None:
    mode = "TANH_APPROXIMATION" if node.attrs.get("approximate", "none") == "tanh" else "EXACT"
    _out(ctx, node, _mb().gelu, x=ctx.get(node.inputs[0]), mode=mode)


@mil_lowering("Softmax")
def softmax(ctx: MILContext, node: Node) -> None:
    _out(ctx, node, _mb().softmax, x=ctx.get(node.inputs[0]), axis=int(node.attrs.get("axis", -1)))


@mil_lowering("LayerNormalization")
def layer_norm(ctx: MILContext, node: Node) -> None:
    rank = len(ctx.shape(node.inputs[0]))
    axis = int(node.attrs.get("axis", -1)) % rank
    kw = dict(x=ctx.get(node.inputs[0]), axes=list(range(axis, rank)), epsilon=float(node.attrs.get("epsilon", 1e-5)))
    gamma = ctx.const(node.inputs[1])
    if gamma is None:
        raise Unsupported("scale must be constant")
    kw["gamma"] = gamma.astype(np.float32)
    if len(node.inputs) > 2 and node.inputs[2]:
        kw["beta"] = ctx.const(node.inputs[2]).astype(np.float32)
    _out(ctx, node, _mb().layer_norm, **kw)


@mil_lowering("Where")
def where(ctx: MILContext, node: Node) -> None:
    _out(ctx, node, _mb().select, cond=ctx.get(node.inputs[0]), a=ctx.get(node.inputs[1]), b=ctx.get(node.inputs[2]))


@mil_lowering("Cast")
def cast(ctx: MILContext, node: Node) -> None:
    from onnx import helper

    to = np.dtype(helper.tensor_dtype_to_np_dtype(node.attrs["to"]))
    dtype = "bool" if to == np.bool_ else "fp16" if to == np.float16 else \
        "fp32" if np.issubdtype(to, np.floating) else "int32"
    _out(ctx, node, _mb().cast, x=ctx.get(node.inputs[0]), dtype=dtype)


# --- reductions --------------------------------------------------------------------------------

_REDUCE = {"ReduceMean": "reduce_mean", "ReduceSum": "reduce_sum", "ReduceMax": "reduce_max",
           "ReduceMin": "reduce_min", "ReduceL2": "reduce_l2_norm", "ReduceProd": "reduce_prod"}


@mil_lowering(*_REDUCE)
def reduce(ctx: MILContext, node: Node) -> None:
    rank = len(ctx.shape(node.inputs[0]))
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1]:
        axes = ctx.const(node.inputs[1])
        if axes is None:
            raise Unsupported("axes must be constant")
    if axes is None or len(axes) == 0:
        if node.attrs.get("noop_with_empty_axes", 0):
            _out(ctx, node, _mb().identity, x=ctx.get(node.inputs[0]))
            return
        axes = range(rank)
    _out(ctx, node, getattr(_mb(), _REDUCE[node.op_type]), x=ctx.get(node.inputs[0]), axes=_axes(axes, rank),
         keep_dims=bool(node.attrs.get("keepdims", 1)))


# --- shape and indexing ------------------------------------------------------------------------


@mil_lowering("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape(ctx: MILContext, node: Node) -> None:
    # static shapes are known for every tensor of a prepared graph: all four are one reshape
    _out(ctx, node, _mb().reshape, x=ctx.get(node.inputs[0]), shape=np.array(ctx.shape(node.outputs[0]), np.int32))


@mil_lowering("Transpose")
def transpose(ctx: MILContext, node: Node) -> None:
    rank = len(ctx.shape(node.inputs[0]))
    perm = node.attrs.get("perm", list(range(rank))[::-1])
    _out(ctx, node, _mb().transpose, x=ctx.get(node.inputs[0]), perm=[int(p) for p in perm])


@mil_lowering("Expand")
def expand(ctx: MILContext, node: Node) -> None:
    src, dst = ctx.shape(node.inputs[0]), ctx.shape(node.outputs[0])
    x = ctx.get(node.inputs[0])
    if len(src) < len(dst):
        x = _mb().reshape(x=x, shape=np.array((1,) * (len(dst) - len(src)) + tuple(src), np.int32))
        src = (1,) * (len(dst) - len(src)) + tuple(src)
    reps = [d if s == 1 else 1 for s, d in zip(src, dst)]
    _out(ctx, node, _mb().tile, x=x, reps=reps)


@mil_lowering("Concat")
def concat(ctx: MILContext, node: Node) -> None:
    rank = len(ctx.shape(node.outputs[0]))
    _out(ctx, node, _mb().concat, values=[ctx.get(i) for i in node.inputs], axis=int(node.attrs["axis"]) % rank)


@mil_lowering("Split")
def split(ctx: MILContext, node: Node) -> None:
    rank = len(ctx.shape(node.inputs[0]))
    axis = int(node.attrs.get("axis", 0)) % rank
    sizes = [ctx.shape(o)[axis] for o in node.outputs]
    outs = _mb().split(x=ctx.get(node.inputs[0]), split_sizes=sizes, axis=axis, name=ctx.name(node.outputs[0]))
    for i, v in enumerate(outs):
        ctx.set(node, v, i)


@mil_lowering("Slice")
def slice_(ctx: MILContext, node: Node) -> None:
    shape = ctx.shape(node.inputs[0])
    starts, ends = ctx.const(node.inputs[1]), ctx.const(node.inputs[2])
    axes = ctx.const(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] else np.arange(len(starts))
    steps = ctx.const(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] else np.ones(len(starts), np.int32)
    if any(v is None for v in (starts, ends, axes, steps)):
        raise Unsupported("starts/ends/axes/steps must be constant")
    begin, end, stride = [0] * len(shape), list(shape), [1] * len(shape)
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = int(a) % len(shape)
        b, e2, _ = slice(int(s), int(e), int(st)).indices(shape[a])
        if st < 0:
            raise Unsupported("negative steps")
        begin[a], end[a], stride[a] = b, e2, int(st)
    _out(ctx, node, _mb().slice_by_index, x=ctx.get(node.inputs[0]), begin=begin, end=end, stride=stride)


@mil_lowering("Gather")
def gather(ctx: MILContext, node: Node) -> None:
    rank = len(ctx.shape(node.inputs[0]))
    axis = int(node.attrs.get("axis", 0)) % rank
    idx = ctx.get(node.inputs[1])
    if isinstance(idx, np.ndarray):
        idx = np.where(idx < 0, idx + ctx.shape(node.inputs[0])[axis], idx).astype(np.int32)
    _gathered(ctx, node, lambda x, **kw: _mb().gather(x=x, indices=idx, axis=axis, **kw))


def _gathered(ctx: MILContext, node: Node, fn) -> None:
    """MIL's gathers take numeric data only: bool masks go through int32 and back."""
    x = ctx.get(node.inputs[0])
    if ctx.graph.dtypes.get(node.inputs[0]) == np.bool_:
        y = fn(_mb().cast(x=x, dtype="int32"))
        _out(ctx, node, _mb().cast, x=y, dtype="bool")
    else:
        ctx.set(node, fn(x, name=ctx.name(node.outputs[0])))


@mil_lowering("GatherND")
def gather_nd(ctx: MILContext, node: Node) -> None:
    idx, b = ctx.get(node.inputs[1]), int(node.attrs.get("batch_dims", 0))
    _gathered(ctx, node, lambda x, **kw: _mb().gather_nd(x=x, indices=idx, batch_dims=b, **kw))


@mil_lowering("ScatterND")
def scatter_nd(ctx: MILContext, node: Node) -> None:
    """MIL's scatter_nd in "update" mode is ONNX's ScatterND without reduction."""
    reduction = node.attrs.get("reduction", "none")
    if reduction != "none":
        raise Unsupported(f"reduction '{reduction}'")
    idx = ctx.const(node.inputs[1])
    indices = ctx.get(node.inputs[1]) if idx is None else np.asarray(idx).astype(np.int32)
    _out(ctx, node, _mb().scatter_nd, data=ctx.get(node.inputs[0]), indices=indices,
         updates=ctx.get(node.inputs[2]), mode="update")


@mil_lowering("Pad")
def pad(ctx: MILContext, node: Node) -> None:
    pads = ctx.const(node.inputs[1])
    if pads is None or (len(node.inputs) > 3 and node.inputs[3]):
        raise Unsupported("pads must be constant, over all axes")
    n = len(pads) // 2
    value = ctx.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else np.float32(0)
    mode = node.attrs.get("mode", "constant")
    if mode not in ("constant", "reflect", "edge"):
        raise Unsupported(f"mode {mode}")
    _out(ctx, node, _mb().pad, x=ctx.get(node.inputs[0]), pad=np.array(
        [v for i in range(n) for v in (pads[i], pads[i + n])], np.int32),
        mode="replicate" if mode == "edge" else mode, constant_val=float(np.asarray(value).reshape(-1)[0]))


# --- what today's exporters emit -------------------------------------------------------------------


@mil_lowering("IsNaN")
def is_nan(ctx: MILContext, node: Node) -> None:
    """NaN is the one value not equal to itself (SDPA exports guard fully-masked rows with IsNaN)."""
    x = ctx.get(node.inputs[0])
    _out(ctx, node, _mb().not_equal, x=x, y=x)


@mil_lowering("Trilu")
def trilu(ctx: MILContext, node: Node) -> None:
    """The triangle kept is a constant mask (shapes are static): a multiply, or a logical and for masks."""
    rows, cols = ctx.shape(node.inputs[0])[-2:]
    k = int(np.asarray(ctx.const(node.inputs[1])).reshape(-1)[0]) if len(node.inputs) > 1 and node.inputs[1] else 0
    keep = np.triu(np.ones((rows, cols), bool), k) if node.attrs.get("upper", 1) else np.tril(np.ones((rows, cols), bool), k)
    x = ctx.get(node.inputs[0])
    if ctx.graph.dtypes.get(node.inputs[0]) == np.dtype(bool):
        _out(ctx, node, _mb().logical_and, x=x, y=keep)
    else:
        _out(ctx, node, _mb().mul, x=x, y=keep.astype(np.float32))


@mil_lowering("CumSum")
def cumsum(ctx: MILContext, node: Node) -> None:
    rank = len(ctx.shape(node.inputs[0]))
    axis = int(np.asarray(ctx.const(node.inputs[1])).reshape(-1)[0]) % rank
    _out(ctx, node, _mb().cumsum, x=ctx.get(node.inputs[0]), axis=axis,
         exclusive=bool(node.attrs.get("exclusive", 0)), reverse=bool(node.attrs.get("reverse", 0)))


@mil_lowering("Resize")
def resize(ctx: MILContext, node: Node) -> None:
    """Nearest-neighbour upsampling of the last two axes by whole factors (FPN and YOLO necks)."""
    src, dst = ctx.shape(node.inputs[0]), ctx.shape(node.outputs[0])
    if node.attrs.get("mode", "nearest") != "nearest" or len(src) != 4 or src[:2] != dst[:2]:
        raise Unsupported("only nearest upsampling of H and W by whole factors")
    fh, fw = dst[2] / src[2], dst[3] / src[3]
    if fh != int(fh) or fw != int(fw) or fh < 1 or fw < 1:
        raise Unsupported(f"scale {fh}x{fw} is not a whole factor")
    _out(ctx, node, _mb().upsample_nearest_neighbor, x=ctx.get(node.inputs[0]),
         scale_factor_height=int(fh), scale_factor_width=int(fw))
