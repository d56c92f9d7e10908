"""TFLite lowerings, one function per ONNX op (registered by ``@lowering``)."""

from __future__ import annotations

import numpy as np

from .lower import NCHW_AXIS_IN_NHWC, LoweringContext, Unsupported, lowering
from ..graph import Node

# --- helpers --------------------------------------------------------------------------------------


def _tfl(ctx: LoweringContext):
    return ctx.builder.tfl


def _same_or_valid(in_hw, k_hw, s_hw, d_hw, pads) -> tuple[str | None, list[int]]:
    """TFLite padding equivalent to ONNX ``pads`` [t, l, b, r], or None with the pads that matter.

    Pads the window never reaches (PyTorch's symmetric padding before stride-2 convs) are dropped.
    """
    t, l, b, r = pads
    eff = [t, l, b, r]
    for i, (size, k, s, d) in enumerate(zip(in_hw, k_hw, s_hw, d_hw)):
        before, after = pads[i], pads[i + 2]
        span = (k - 1) * d + 1
        out = (size + before + after - span) // s + 1
        used_after = max(0, (out - 1) * s + span - size - before)
        eff[i + 2] = min(after, used_after)
    if not any(eff):
        return "VALID", eff
    same = []
    for i, (size, k, s, d) in enumerate(zip(in_hw, k_hw, s_hw, d_hw)):
        span = (k - 1) * d + 1
        out = -(-size // s)
        total = max((out - 1) * s + span - size, 0)
        same += [total // 2, total - total // 2]
    if [eff[0], eff[2], eff[1], eff[3]] == same:
        return "SAME", eff
    return None, eff


def _spatial_padding(ctx, node: Node, x: int, in_shape, k_hw, pad_value: float = 0.0):
    """Returns (tflite Padding enum, input tensor) — with an explicit PAD op when needed."""
    a = node.attrs
    if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID", "SAME_UPPER"):
        raise Unsupported(f"auto_pad={a['auto_pad']}")
    s = a.get("strides", [1, 1])
    d = a.get("dilations", [1, 1])
    if a.get("auto_pad") == "SAME_UPPER":
        return _tfl(ctx).Padding.SAME, x
    pads = list(a.get("pads", [0, 0, 0, 0]))
    kind, eff = _same_or_valid(in_shape[2:], k_hw, s, d, pads)
    if kind is not None:
        return getattr(_tfl(ctx).Padding, kind), x
    n, c, h, w = in_shape
    padded = ctx.builder.like(f"{node.name}_pad", (n, h + eff[0] + eff[2], w + eff[1] + eff[3], c), x)
    paddings = np.array([[0, 0], [eff[0], eff[2]], [eff[1], eff[3]], [0, 0]], np.int32)
    if pad_value == 0.0:
        ctx.builder.op("PAD", [x, ctx.constant(f"{node.name}_paddings", paddings)], [padded])
    else:  # max pooling pads with the lowest value
        low = (ctx.builder.constant(f"{node.name}_padvalue", np.array([-128], np.int8), **_quant_of(ctx, x))
               if ctx.int8 else ctx.constant(f"{node.name}_padvalue", np.array([pad_value], np.float32)))
        ctx.builder.op("PADV2", [x, ctx.constant(f"{node.name}_paddings", paddings), low], [padded])
    return _tfl(ctx).Padding.VALID, padded


def _quant_of(ctx: LoweringContext, tensor: int) -> dict:
    t = ctx.builder.tensors[tensor]
    return {"scales": t.scales, "zero_points": t.zero_points}


def _bias(ctx: LoweringContext, name: str, bias: np.ndarray, x: int, weights: int) -> int:
    """fp32 bias; in full-integer mode int32 with scale s_in * s_w (per output channel), zero point 0."""
    if not ctx.int8:
        return ctx.constant(name, bias.astype(np.float32), weight=True)
    scales = ctx.scale_of(x) * np.asarray(ctx.builder.tensors[weights].scales, np.float64)
    q = np.clip(np.round(bias / scales), -(2**31), 2**31 - 1).astype(np.int32)
    return ctx.builder.constant(name, q, scales=scales.astype(np.float32), zero_points=np.zeros(len(scales), np.int64))


def _fused_activation(ctx: LoweringContext, node: Node) -> tuple[int, str]:
    """Fuse a lone Relu / Clip(0, 6) consumer into ``node``; returns (activation enum, output name)."""
    act = _tfl(ctx).ActivationFunctionType
    out = node.outputs[0]
    users = ctx.consumers(out)
    if len(users) != 1 or out in ctx.graph.outputs:
        return act.NONE, out
    u = users[0]
    kind = None
    if u.op_type == "Relu":
        kind = act.RELU
    elif u.op_type == "Clip" and _clip_bounds_constant(ctx, u):
        lo, hi = _clip_bounds(ctx, u)
        kind = {(0.0, 6.0): act.RELU6, (-1.0, 1.0): act.RELU_N1_TO_1}.get((lo, hi))
    if kind is None:
        return act.NONE, out
    ctx.skip.add(u.name)
    ctx.aliases[u.outputs[0]] = out
    return kind, out


def _clip_bounds_constant(ctx: LoweringContext, node: Node) -> bool:
    return all(ctx.is_const(b) for b in node.inputs[1:3] if b)


def _clip_bounds(ctx: LoweringContext, node: Node) -> tuple[float, float]:
    lo = ctx.const_value(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] else node.attrs.get("min", -np.inf)
    hi = ctx.const_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else node.attrs.get("max", np.inf)
    return float(lo), float(hi)


# --- convolution and pooling --------------------------------------------------------------------


@lowering("Conv")
def conv(ctx: LoweringContext, node: Node) -> None:
    if not ctx.is_const(node.inputs[1]):
        raise Unsupported("weights must be constant")
    w = ctx.const_value(node.inputs[1])
    if w.ndim != 4:
        raise Unsupported(f"{w.ndim - 2}-D convolution")
    in_shape = ctx.shape(node.inputs[0])
    cin, cout, group = in_shape[1], w.shape[0], node.attrs.get("group", 1)
    bias = ctx.const_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else np.zeros(cout, np.float32)
    x = ctx.get(node.inputs[0], "nhwc")
    padding, x = _spatial_padding(ctx, node, x, in_shape, w.shape[2:])
    activation, out_name = _fused_activation(ctx, node)
    s = node.attrs.get("strides", [1, 1])
    d = node.attrs.get("dilations", [1, 1])
    y = ctx.output(out_name, "nhwc")
    common = dict(Padding=padding, StrideH=s[0], StrideW=s[1], DilationHFactor=d[0], DilationWFactor=d[1],
                  FusedActivationFunction=activation)
    if group == 1:
        k = ctx.constant(f"{node.name}_filter", w.transpose(0, 2, 3, 1), weight=True, channel_axis=0)  # OIHW -> OHWI
        b = _bias(ctx, f"{node.name}_bias", bias, x, k)
        ctx.builder.op("CONV_2D", [x, k, b], [y], "Conv2DOptions", **common)
    elif group == cin and cout % cin == 0:
        k = ctx.constant(f"{node.name}_filter", w.transpose(1, 2, 3, 0), weight=True,  # (Cout,1,H,W) -> (1,H,W,Cout)
                         channel_axis=3)
        b = _bias(ctx, f"{node.name}_bias", bias, x, k)
        ctx.builder.op("DEPTHWISE_CONV_2D", [x, k, b], [y], "DepthwiseConv2DOptions",
                       DepthMultiplier=cout // cin, **common)
    else:
        raise Unsupported(f"grouped convolution with group={group} (only 1 or depthwise)")


def _pool(ctx: LoweringContext, node: Node, op: str) -> None:
    a = node.attrs
    if a.get("ceil_mode", 0):
        raise Unsupported("ceil_mode=1")
    in_shape = ctx.shape(node.inputs[0])
    k = a["kernel_shape"]
    x = ctx.get(node.inputs[0], "nhwc")
    pad_value = float(np.finfo(np.float32).min) if op == "MAX_POOL_2D" else 0.0
    if op == "AVERAGE_POOL_2D" and any(a.get("pads", [0])) and a.get("count_include_pad", 0):
        raise Unsupported("count_include_pad=1 with padding")
    padding, x2 = _spatial_padding(ctx, node, x, in_shape, k, pad_value)
    if x2 != x and op == "AVERAGE_POOL_2D":
        raise Unsupported("padding that TFLite's SAME/VALID cannot express")
    activation, out_name = _fused_activation(ctx, node)
    s = a.get("strides", [1, 1])
    y = ctx.output(out_name, "nhwc", same_as=x2)  # int8 pooling keeps the input's quantization
    ctx.builder.op(op, [x2], [y], "Pool2DOptions", Padding=padding, StrideH=s[0], StrideW=s[1],
                   FilterHeight=k[0], FilterWidth=k[1], FusedActivationFunction=activation)


@lowering("MaxPool")
def max_pool(ctx: LoweringContext, node: Node) -> None:
    if len(node.outputs) > 1 and node.outputs[1]:
        raise Unsupported("the Indices output")
    _pool(ctx, node, "MAX_POOL_2D")


@lowering("AveragePool")
def average_pool(ctx: LoweringContext, node: Node) -> None:
    _pool(ctx, node, "AVERAGE_POOL_2D")


@lowering("GlobalAveragePool")
def global_average_pool(ctx: LoweringContext, node: Node) -> None:
    x = ctx.get(node.inputs[0], "nhwc")
    y = ctx.output(node.outputs[0], "nhwc")
    ctx.builder.op("MEAN", [x, ctx.constant(f"{node.name}_axes", np.array([1, 2], np.int32))], [y],
                   "ReducerOptions", KeepDims=True)


# --- reductions ---------------------------------------------------------------------------------


def _reduce(ctx: LoweringContext, node: Node, op: str) -> None:
    rank = len(ctx.shape(node.inputs[0]))
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1]:
        axes = ctx.const_value(node.inputs[1]).tolist()
    axes = list(range(rank)) if axes is None else [a % rank for a in axes]
    keep = bool(node.attrs.get("keepdims", 1))
    layout = ctx.layout_of(node.inputs[0]) if rank == 4 else "nchw"
    if layout == "nhwc":
        axes = [NCHW_AXIS_IN_NHWC[a] for a in axes]
    x = ctx.get(node.inputs[0], layout)
    y = ctx.output(node.outputs[0], layout if keep else "nchw")
    ctx.builder.op(op, [x, ctx.constant(f"{node.name}_axes", np.array(sorted(axes), np.int32))], [y],
                   "ReducerOptions", KeepDims=keep)


@lowering("ReduceMean")
def reduce_mean(ctx, node):
    _reduce(ctx, node, "MEAN")


@lowering("ReduceSum")
def reduce_sum(ctx, node):
    _reduce(ctx, node, "SUM")


@lowering("ReduceMax")
def reduce_max(ctx, node):
    _reduce(ctx, node, "REDUCE_MAX")


# --- elementwise --------------------------------------------------------------------------------


# int8 kernels whose output quantization is free (calibrated) — others need fixed parameters
_INT8_UNARY = {"RELU", "RELU6", "RELU_N1_TO_1", "HARD_SWISH", "LEAKY_RELU"}


def _unary(ctx: LoweringContext, node: Node, op: str, options: str | None = None, **fields) -> None:
    if ctx.int8 and op not in _INT8_UNARY:
        raise Unsupported(f"{op} in full-integer int8 (not lowered yet)")
    layout = ctx.layout_of(node.inputs[0])
    x = ctx.get(node.inputs[0], layout)
    y = ctx.output(node.outputs[0], layout)
    ctx.builder.op(op, [x], [y], options, **fields)


_UNARY = {"Relu": "RELU", "Sigmoid": "LOGISTIC", "Tanh": "TANH", "HardSwish": "HARD_SWISH", "Exp": "EXP",
          "Sqrt": "SQRT", "Neg": "NEG", "Abs": "ABS", "Log": "LOG"}


@lowering(*_UNARY)
def unary(ctx: LoweringContext, node: Node) -> None:
    _unary(ctx, node, _UNARY[node.op_type])


@lowering("LeakyRelu")
def leaky_relu(ctx, node):
    _unary(ctx, node, "LEAKY_RELU", "LeakyReluOptions", Alpha=float(node.attrs.get("alpha", 0.01)))


@lowering("Gelu")
def gelu(ctx, node):
    _unary(ctx, node, "GELU", "GeluOptions", Approximate=node.attrs.get("approximate", "none") == "tanh")


@lowering("Clip")
def clip(ctx: LoweringContext, node: Node) -> None:
    if not _clip_bounds_constant(ctx, node):  # bounds computed in the graph (a dB floor below the peak)
        if ctx.int8:
            raise Unsupported("Clip with computed bounds in full-integer int8")
        layout = ctx.layout_of(node.inputs[0])
        x = ctx.get(node.inputs[0], layout)
        for i, (op, bound) in enumerate((("MAXIMUM", node.inputs[1:2]), ("MINIMUM", node.inputs[2:3]))):
            if not bound or not bound[0]:
                continue
            last = i == 1 or len(node.inputs) < 3 or not node.inputs[2]
            y = ctx.output(node.outputs[0], layout) if last else ctx.builder.tensor(f"{node.name}_lo", ctx.builder.tensors[x].shape)
            b = ctx.get(bound[0], "nchw")
            ctx.builder.op(op, [x, b], [y])
            x = y
        return
    lo, hi = _clip_bounds(ctx, node)
    op = {(0.0, 6.0): "RELU6", (-1.0, 1.0): "RELU_N1_TO_1", (0.0, np.inf): "RELU"}.get((lo, hi))
    if op:
        return _unary(ctx, node, op)
    if ctx.int8:
        raise Unsupported(f"Clip({lo}, {hi}) in full-integer int8")
    layout = ctx.layout_of(node.inputs[0])
    x = ctx.get(node.inputs[0], layout)
    mid = ctx.builder.tensor(f"{node.name}_max", ctx.builder.tensors[x].shape)
    ctx.builder.op("MAXIMUM", [x, ctx.constant(f"{node.name}_lo", np.array(lo, np.float32))], [mid])
    y = ctx.output(node.outputs[0], layout)
    ctx.builder.op("MINIMUM", [mid, ctx.constant(f"{node.name}_hi", np.array(hi, np.float32))], [y])


@lowering("HardSigmoid")
def hard_sigmoid(ctx: LoweringContext, node: Node) -> None:
    """max(0, min(1, alpha*x + beta)) as MUL, ADD, then RELU_0_TO_1."""
    alpha, beta = float(node.attrs.get("alpha", 0.2)), float(node.attrs.get("beta", 0.5))
    layout = ctx.layout_of(node.inputs[0])
    x = ctx.get(node.inputs[0], layout)
    shape = ctx.builder.tensors[x].shape
    t1 = ctx.builder.tensor(f"{node.name}_mul", shape)
    ctx.builder.op("MUL", [x, ctx.constant(f"{node.name}_alpha", np.array(alpha, np.float32))], [t1], "MulOptions")
    t2 = ctx.builder.tensor(f"{node.name}_add", shape)
    ctx.builder.op("ADD", [t1, ctx.constant(f"{node.name}_beta", np.array(beta, np.float32))], [t2], "AddOptions")
    y = ctx.output(node.outputs[0], layout)
    ctx.builder.op("RELU_0_TO_1", [t2], [y])


_BINARY = {"Add": ("ADD", "AddOptions"), "Sub": ("SUB", "SubOptions"), "Mul": ("MUL", "MulOptions"),
           "Div": ("DIV", "DivOptions"), "Pow": ("POW", None), "Max": ("MAXIMUM", None), "Min": ("MINIMUM", None)}


@lowering(*_BINARY)
def binary(ctx: LoweringContext, node: Node) -> None:
    op, options = _BINARY[node.op_type]
    a, b = node.inputs[:2]
    out_rank = len(ctx.shape(node.outputs[0]))
    if ctx.int8 and (op not in ("ADD", "SUB", "MUL") or out_rank > 4 or any(
            ctx.shape(n) != ctx.shape(node.outputs[0]) for n in (a, b))):
        raise Unsupported(f"int8 {op} with broadcasting")
    acts = [n for n in (a, b) if not ctx.is_const(n)]
    nhwc = out_rank == 4 and acts and all(ctx.layout_of(n) == "nhwc" and len(ctx.shape(n)) == 4 for n in acts)
    layout = "nhwc" if nhwc else "nchw"
    ins = []
    for n in (a, b):
        if ctx.is_const(n):
            v = ctx.const_value(n)
            if nhwc:
                v = v.reshape((1,) * (4 - v.ndim) + v.shape).transpose(0, 2, 3, 1)
            v = v.astype(np.float32) if v.dtype == np.float64 else v
            cname = f"{node.name}_{len(ins)}"
            ins.append(ctx.quantized_constant(cname, v) if ctx.int8 and v.dtype == np.float32 else ctx.constant(cname, v))
        else:
            ins.append(ctx.get(n, layout))
    activation, out_name = (_fused_activation(ctx, node) if op in ("ADD", "SUB", "MUL", "DIV")
                            else (_tfl(ctx).ActivationFunctionType.NONE, node.outputs[0]))
    y = ctx.output(out_name, layout)
    fields = {"FusedActivationFunction": activation} if options else {}
    ctx.builder.op(op, ins, [y], options, **fields)


# --- linear algebra -----------------------------------------------------------------------------


def _fully_connected(ctx: LoweringContext, node: Node, x_name: str, w_out_in: np.ndarray, bias, keep_dims: bool):
    x = ctx.get(x_name, "nchw")
    w = ctx.constant(f"{node.name}_weights", w_out_in.astype(np.float32), weight=True, channel_axis=0, int4_ok=True)
    if bias is None and ctx.int8:
        bias = np.zeros(w_out_in.shape[0], np.float32)
    b = _bias(ctx, f"{node.name}_bias", bias, x, w) if bias is not None else -1
    activation, out_name = _fused_activation(ctx, node)
    y = ctx.output(out_name, "nchw")
    ctx.builder.op("FULLY_CONNECTED", [x, w, b], [y], "FullyConnectedOptions",
                   FusedActivationFunction=activation, KeepNumDims=keep_dims,
                   AsymmetricQuantizeInputs=ctx.weights in ("int8", "int4"))


@lowering("Gemm")
def gemm(ctx: LoweringContext, node: Node) -> None:
    a = node.attrs
    if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
        raise Unsupported("transA or alpha/beta != 1")
    if not ctx.is_const(node.inputs[1]):
        raise Unsupported("non-constant B")
    w = ctx.const_value(node.inputs[1])
    w = w if a.get("transB", 0) else w.T
    bias = ctx.const_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    if bias is not None and bias.size != w.shape[0]:
        bias = np.broadcast_to(bias, (w.shape[0],))
    _fully_connected(ctx, node, node.inputs[0], w, bias, keep_dims=False)


@lowering("MatMul")
def matmul(ctx: LoweringContext, node: Node) -> None:
    a, b = node.inputs
    if ctx.is_const(b) and ctx.const_value(b).ndim == 2:
        rank = len(ctx.shape(a))
        return _fully_connected(ctx, node, a, ctx.const_value(b).T, None, keep_dims=rank > 2)
    if ctx.int8:
        raise Unsupported("activation x activation BATCH_MATMUL in int8")  # LiteRT aborts on it: float island
    y = ctx.output(node.outputs[0], "nchw")
    ctx.builder.op("BATCH_MATMUL", [ctx.get(a), ctx.get(b)], [y], "BatchMatMulOptions")


# --- shape and data movement --------------------------------------------------------------------


def _reshape_to(ctx: LoweringContext, node: Node, src: str) -> None:
    x = ctx.get(src, "nchw")
    shape = ctx.shape(node.outputs[0])
    y = ctx.output(node.outputs[0], "nchw", same_as=x)
    ctx.builder.op("RESHAPE", [x, ctx.constant(f"{node.name}_shape", np.array(shape, np.int32))], [y])


@lowering("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape(ctx: LoweringContext, node: Node) -> None:
    _reshape_to(ctx, node, node.inputs[0])


@lowering("Identity", "Dropout")
def identity(ctx: LoweringContext, node: Node) -> None:
    ctx.aliases[node.outputs[0]] = node.inputs[0]


@lowering("Transpose")
def transpose(ctx: LoweringContext, node: Node) -> None:
    rank = len(ctx.shape(node.inputs[0]))
    perm = node.attrs.get("perm", list(range(rank))[::-1])
    x = ctx.get(node.inputs[0], "nchw")
    y = ctx.output(node.outputs[0], "nchw", same_as=x)
    ctx.builder.op("TRANSPOSE", [x, ctx.constant(f"{node.name}_perm", np.array(perm, np.int32))], [y])


@lowering("Concat")
def concat(ctx: LoweringContext, node: Node) -> None:
    rank = len(ctx.shape(node.outputs[0]))
    axis = node.attrs["axis"] % rank
    acts = [n for n in node.inputs if not ctx.is_const(n)]
    nhwc = rank == 4 and acts and all(ctx.layout_of(n) == "nhwc" for n in acts)
    layout = "nhwc" if nhwc else "nchw"
    ins = [ctx.get(n, layout) for n in node.inputs]
    y = ctx.output(node.outputs[0], layout)
    ctx.builder.op("CONCATENATION", ins, [y], "ConcatenationOptions",
                   Axis=NCHW_AXIS_IN_NHWC[axis] if nhwc else axis)


@lowering("Softmax")
def softmax(ctx: LoweringContext, node: Node) -> None:
    """TFLite's SOFTMAX works on the last axis: another axis (YOLOv8's DFL head) is moved there and back."""
    shape = ctx.shape(node.inputs[0])
    rank = len(shape)
    axis = node.attrs.get("axis", -1) % rank
    x = ctx.get(node.inputs[0], "nchw")
    if axis == rank - 1:
        ctx.builder.op("SOFTMAX", [x], [ctx.output(node.outputs[0], "nchw")], "SoftmaxOptions", Beta=1.0)
        return
    if ctx.int8:
        raise Unsupported("softmax over an inner axis in full-integer int8")
    perm = [d for d in range(rank) if d != axis] + [axis]
    moved = tuple(shape[d] for d in perm)
    t = ctx.builder.tensor(f"{node.name}_moved", moved)
    ctx.builder.op("TRANSPOSE", [x, ctx.constant(f"{node.name}_perm", np.array(perm, np.int32))], [t])
    sm = ctx.builder.tensor(f"{node.name}_softmax", moved)
    ctx.builder.op("SOFTMAX", [t], [sm], "SoftmaxOptions", Beta=1.0)
    back = np.argsort(perm).astype(np.int32)
    ctx.builder.op("TRANSPOSE", [sm, ctx.constant(f"{node.name}_perm_back", back)], [ctx.output(node.outputs[0], "nchw")])


# --- transformer ops ----------------------------------------------------------------------------


@lowering("Gather")
def gather(ctx: LoweringContext, node: Node) -> None:
    data, idx = node.inputs
    rank = len(ctx.shape(data))
    axis = node.attrs.get("axis", 0) % rank
    x = ctx.get(data) if not ctx.is_const(data) else ctx.constant(f"{node.name}_table", ctx.const_value(data), weight=True)
    i = ctx.get(idx) if not ctx.is_const(idx) else ctx.constant(f"{node.name}_idx", ctx.const_value(idx).astype(np.int32))
    y = ctx.output(node.outputs[0])
    ctx.builder.op("GATHER", [x, i], [y], "GatherOptions", Axis=axis, BatchDims=0)


@lowering("GatherND")
def gather_nd(ctx: LoweringContext, node: Node) -> None:
    if node.attrs.get("batch_dims", 0):
        raise Unsupported("batch_dims != 0")
    data, idx = node.inputs
    i = ctx.get(idx) if not ctx.is_const(idx) else ctx.constant(f"{node.name}_idx", ctx.const_value(idx).astype(np.int32))
    y = ctx.output(node.outputs[0])
    ctx.builder.op("GATHER_ND", [ctx.get(data), i], [y])


@lowering("ScatterND")
def scatter_nd(ctx: LoweringContext, node: Node) -> None:
    """data with the rows ``indices`` names replaced by ``updates`` (a static KV cache's update). TFLite's
    SCATTER_ND scatters into zeros (and sums repeats), so: data * keep + SCATTER_ND(indices, updates), with
    ``keep`` (0 where written) computed here from the constant indices."""
    if node.attrs.get("reduction", "none") != "none":
        raise Unsupported(f"reduction '{node.attrs['reduction']}'")
    if ctx.int8:
        raise Unsupported("scatter in full-integer int8")
    data, idx, upd = node.inputs
    if not ctx.is_const(idx):
        raise Unsupported("indices computed at run time (constant indices are supported)")
    shape = ctx.shape(data)
    indices = ctx.const_value(idx).astype(np.int64)
    k = indices.shape[-1]
    rows = indices.reshape(-1, k) % np.array(shape[:k], np.int64)  # negative indices count from the end
    if len({tuple(r) for r in rows}) != len(rows):
        raise Unsupported("repeated indices (ONNX leaves their order undefined)")
    keep = np.ones(shape, np.float32)
    for r in rows:
        keep[tuple(r)] = 0.0
    scattered = ctx.builder.tensor(f"{node.name}_scattered", shape)
    ctx.builder.op("SCATTER_ND", [ctx.constant(f"{node.name}_idx", rows.reshape(indices.shape).astype(np.int32)),
                                  ctx.get(upd), ctx.constant(f"{node.name}_shape", np.array(shape, np.int32))],
                   [scattered], "ScatterNdOptions")
    kept = ctx.builder.tensor(f"{node.name}_kept", shape)
    ctx.builder.op("MUL", [ctx.get(data), ctx.constant(f"{node.name}_keep", keep)], [kept], "MulOptions")
    ctx.builder.op("ADD", [kept, scattered], [ctx.output(node.outputs[0])], "AddOptions")


@lowering("Cast")
def cast(ctx: LoweringContext, node: Node) -> None:
    layout = ctx.layout_of(node.inputs[0])
    y = ctx.output(node.outputs[0], layout)
    ctx.builder.op("CAST", [ctx.get(node.inputs[0], layout)], [y])


def _operands(ctx: LoweringContext, node: Node) -> list[int]:
    """The node's inputs as tflite tensors in the ONNX layout, constants written as they are."""
    return [ctx.get(n) if not ctx.is_const(n) else ctx.constant(f"{node.name}_{k}", ctx.const_value(n))
            for k, n in enumerate(node.inputs)]


@lowering("And", "Or")
def logical(ctx: LoweringContext, node: Node) -> None:
    op = {"And": "LOGICAL_AND", "Or": "LOGICAL_OR"}[node.op_type]
    ctx.builder.op(op, _operands(ctx, node), [ctx.output(node.outputs[0], dtype="bool")])


_COMPARE = {"Equal": "EQUAL", "Greater": "GREATER", "GreaterOrEqual": "GREATER_EQUAL", "Less": "LESS",
            "LessOrEqual": "LESS_EQUAL"}


@lowering(*_COMPARE)
def compare(ctx: LoweringContext, node: Node) -> None:
    if ctx.int8:
        raise Unsupported("comparisons run in float")
    ctx.builder.op(_COMPARE[node.op_type], _operands(ctx, node), [ctx.output(node.outputs[0], dtype="bool")])


@lowering("Not")
def logical_not(ctx: LoweringContext, node: Node) -> None:
    ctx.builder.op("LOGICAL_NOT", _operands(ctx, node), [ctx.output(node.outputs[0], dtype="bool")])


@lowering("IsNaN")
def is_nan(ctx: LoweringContext, node: Node) -> None:
    """NaN is the one value not equal to itself (SDPA exports guard fully-masked rows with IsNaN)."""
    if ctx.int8:
        raise Unsupported("IsNaN runs in float")
    x = ctx.get(node.inputs[0])
    ctx.builder.op("NOT_EQUAL", [x, x], [ctx.output(node.outputs[0], dtype="bool")])


@lowering("Reciprocal")
def reciprocal(ctx: LoweringContext, node: Node) -> None:
    if ctx.int8:
        raise Unsupported("Reciprocal runs in float")
    layout = ctx.layout_of(node.inputs[0])
    one = ctx.constant(f"{node.name}_one", np.array(1.0, np.float32))
    ctx.builder.op("DIV", [one, ctx.get(node.inputs[0], layout)], [ctx.output(node.outputs[0], layout)], "DivOptions")


@lowering("Floor", "Ceil", "Sin", "Cos")
def rounding_and_trig(ctx: LoweringContext, node: Node) -> None:
    _unary(ctx, node, node.op_type.upper())


@lowering("GlobalMaxPool")
def global_max_pool(ctx: LoweringContext, node: Node) -> None:
    rank = len(ctx.shape(node.inputs[0]))
    if rank == 4:
        x, y, axes = ctx.get(node.inputs[0], "nhwc"), ctx.output(node.outputs[0], "nhwc"), [1, 2]
    else:
        x, y, axes = ctx.get(node.inputs[0]), ctx.output(node.outputs[0]), list(range(2, rank))
    ctx.builder.op("REDUCE_MAX", [x, ctx.constant(f"{node.name}_axes", np.array(axes, np.int32))], [y],
                   "ReducerOptions", KeepDims=True)


@lowering("CumSum")
def cumsum(ctx: LoweringContext, node: Node) -> None:
    if ctx.int8:
        raise Unsupported("CumSum runs in float")
    rank = len(ctx.shape(node.inputs[0]))
    axis = int(np.asarray(ctx.const_value(node.inputs[1])).reshape(-1)[0]) % rank
    ctx.builder.op("CUMSUM", [ctx.get(node.inputs[0]), ctx.constant(f"{node.name}_axis", np.array(axis, np.int32))],
                   [ctx.output(node.outputs[0])], "CumsumOptions", Exclusive=bool(node.attrs.get("exclusive", 0)),
                   Reverse=bool(node.attrs.get("reverse", 0)))


@lowering("Trilu")
def trilu(ctx: LoweringContext, node: Node) -> None:
    """The triangle kept is a constant mask here (shapes are static): a multiply, or a logical and for masks."""
    shape = ctx.shape(node.inputs[0])
    k = int(np.asarray(ctx.const_value(node.inputs[1])).reshape(-1)[0]) if len(node.inputs) > 1 and node.inputs[1] else 0
    rows, cols = shape[-2], shape[-1]
    keep = np.tril(np.ones((rows, cols), bool), k) if not node.attrs.get("upper", 1) else np.triu(np.ones((rows, cols), bool), k)
    dtype = ctx.dtype(node.inputs[0])
    if dtype == "bool":
        ctx.builder.op("LOGICAL_AND", [ctx.get(node.inputs[0]), ctx.constant(f"{node.name}_mask", keep)],
                       [ctx.output(node.outputs[0], dtype="bool")])
        return
    if ctx.int8:
        raise Unsupported("Trilu runs in float")
    mask = ctx.constant(f"{node.name}_mask", keep.astype(np.dtype(dtype)))
    ctx.builder.op("MUL", [ctx.get(node.inputs[0]), mask], [ctx.output(node.outputs[0])], "MulOptions")


@lowering("Where")
def where(ctx: LoweringContext, node: Node) -> None:
    ctx.builder.op("SELECT_V2", _operands(ctx, node), [ctx.output(node.outputs[0])])


@lowering("Expand")
def expand(ctx: LoweringContext, node: Node) -> None:
    shape = np.array(ctx.shape(node.outputs[0]), np.int32)
    ctx.builder.op("BROADCAST_TO", [ctx.get(node.inputs[0]), ctx.constant(f"{node.name}_shape", shape)],
                   [ctx.output(node.outputs[0])])


@lowering("ReduceL2")
def reduce_l2(ctx: LoweringContext, node: Node) -> None:
    x = ctx.get(node.inputs[0])
    sq = ctx.builder.tensor(f"{node.name}_sq", ctx.shape(node.inputs[0]))
    ctx.builder.op("SQUARE", [x], [sq])
    rank = len(ctx.shape(node.inputs[0]))
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1]:
        axes = ctx.const_value(node.inputs[1]).tolist()
    axes = sorted(a % rank for a in (range(rank) if axes is None else axes))
    keep = bool(node.attrs.get("keepdims", 1))
    s = ctx.builder.tensor(f"{node.name}_sum", ctx.shape(node.outputs[0]))
    ctx.builder.op("SUM", [sq, ctx.constant(f"{node.name}_axes", np.array(axes, np.int32))], [s], "ReducerOptions",
                   KeepDims=keep)
    ctx.builder.op("SQRT", [s], [ctx.output(node.outputs[0])])


@lowering("LayerNormalization")
def layer_norm(ctx: LoweringContext, node: Node) -> None:
    """(x - mean) * rsqrt(var + eps) * gamma + beta over the last axis, from TFLite builtins."""
    shape = ctx.shape(node.inputs[0])
    if node.attrs.get("axis", -1) % len(shape) != len(shape) - 1:
        raise Unsupported("normalization over axes other than the last")
    eps = float(node.attrs.get("epsilon", 1e-5))
    b, t = ctx.builder, ctx.builder.tensor
    x = ctx.get(node.inputs[0])
    axis = ctx.constant(f"{node.name}_axis", np.array([len(shape) - 1], np.int32))
    red = shape[:-1] + (1,)
    mean = t(f"{node.name}_mean", red)
    b.op("MEAN", [x, axis], [mean], "ReducerOptions", KeepDims=True)
    centered = t(f"{node.name}_centered", shape)
    b.op("SUB", [x, mean], [centered], "SubOptions")
    sq = t(f"{node.name}_sq", shape)
    b.op("SQUARE", [centered], [sq])
    var = t(f"{node.name}_var", red)
    b.op("MEAN", [sq, axis], [var], "ReducerOptions", KeepDims=True)
    var_eps = t(f"{node.name}_var_eps", red)
    b.op("ADD", [var, ctx.constant(f"{node.name}_eps", np.array(eps, np.float32))], [var_eps], "AddOptions")
    inv = t(f"{node.name}_rsqrt", red)
    b.op("RSQRT", [var_eps], [inv])
    normed = t(f"{node.name}_normed", shape)
    b.op("MUL", [centered, inv], [normed], "MulOptions")
    gamma = ctx.constant(f"{node.name}_gamma", ctx.const_value(node.inputs[1]).astype(np.float32))
    has_beta = len(node.inputs) > 2 and node.inputs[2]
    scaled = t(f"{node.name}_scaled", shape) if has_beta else ctx.output(node.outputs[0])
    b.op("MUL", [normed, gamma], [scaled], "MulOptions")
    if has_beta:
        beta = ctx.constant(f"{node.name}_beta", ctx.const_value(node.inputs[2]).astype(np.float32))
        b.op("ADD", [scaled, beta], [ctx.output(node.outputs[0])], "AddOptions")


@lowering("Split")
def split(ctx: LoweringContext, node: Node) -> None:
    shape = ctx.shape(node.inputs[0])
    axis = node.attrs.get("axis", 0) % len(shape)
    if len(node.inputs) > 1 and node.inputs[1]:
        sizes = ctx.const_value(node.inputs[1]).astype(np.int32)
    else:
        sizes = np.array([ctx.shape(o)[axis] for o in node.outputs], np.int32)
    x = ctx.get(node.inputs[0])
    outs = [ctx.output(o, same_as=x) for o in node.outputs]
    ctx.builder.op("SPLIT_V", [x, ctx.constant(f"{node.name}_sizes", sizes),
                               ctx.constant(f"{node.name}_axis", np.array(axis, np.int32))], outs,
                   "SplitVOptions", NumSplits=len(outs))


# --- more spatial ops -----------------------------------------------------------------------------


@lowering("BatchNormalization")
def batch_norm(ctx: LoweringContext, node: Node) -> None:
    """Inference batch norm (one the exporter could not fold into a conv) as MUL + ADD per channel."""
    gamma, beta, mean, var = (ctx.const_value(n).astype(np.float64) for n in node.inputs[1:5])
    scale = gamma / np.sqrt(var + float(node.attrs.get("epsilon", 1e-5)))
    shift = beta - mean * scale
    rank = len(ctx.shape(node.inputs[0]))
    layout = ctx.layout_of(node.inputs[0]) if rank == 4 else "nchw"
    shape = (-1,) if layout == "nhwc" or rank == 2 else (-1,) + (1,) * (rank - 2)
    x = ctx.get(node.inputs[0], layout)
    mid = ctx.builder.tensor(f"{node.name}_scaled", ctx.builder.tensors[x].shape)
    ctx.builder.op("MUL", [x, ctx.constant(f"{node.name}_scale", scale.astype(np.float32).reshape(shape))], [mid],
                   "MulOptions")
    ctx.builder.op("ADD", [mid, ctx.constant(f"{node.name}_shift", shift.astype(np.float32).reshape(shape))],
                   [ctx.output(node.outputs[0], layout)], "AddOptions")


@lowering("Pad")
def pad(ctx: LoweringContext, node: Node) -> None:
    if node.attrs.get("mode", "constant") != "constant":
        raise Unsupported(f"mode={node.attrs['mode']}")
    rank = len(ctx.shape(node.inputs[0]))
    pads = ctx.const_value(node.inputs[1]).astype(np.int64)
    if len(node.inputs) > 3 and node.inputs[3]:
        raise Unsupported("the axes input")
    if (pads < 0).any():
        raise Unsupported("negative pads (cropping)")
    pairs = np.stack([pads[:rank], pads[rank:]], axis=1)  # (rank, 2) in ONNX axis order
    layout = ctx.layout_of(node.inputs[0]) if rank == 4 else "nchw"
    if layout == "nhwc":
        pairs = pairs[[0, 2, 3, 1]]
    x = ctx.get(node.inputs[0], layout)
    value = ctx.const_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else np.array(0.0)
    ins = [x, ctx.constant(f"{node.name}_paddings", pairs.astype(np.int32))]
    op = "PAD"
    if float(np.asarray(value).ravel()[0]) != 0.0:
        op = "PADV2"
        ins.append(ctx.constant(f"{node.name}_value", np.asarray(value, np.float32).reshape(1)))
    ctx.builder.op(op, ins, [ctx.output(node.outputs[0], layout)])


@lowering("Slice")
def slice_(ctx: LoweringContext, node: Node) -> None:
    shape = ctx.shape(node.inputs[0])
    rank = len(shape)
    starts, ends = (ctx.const_value(n).astype(np.int64) for n in node.inputs[1:3])
    axes = ctx.const_value(node.inputs[3]).astype(np.int64) if len(node.inputs) > 3 and node.inputs[3] \
        else np.arange(len(starts))
    steps = ctx.const_value(node.inputs[4]).astype(np.int64) if len(node.inputs) > 4 and node.inputs[4] \
        else np.ones(len(starts), np.int64)
    begin, end, stride = [0] * rank, list(shape), [1] * rank
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = int(a) % rank
        if st < 1:
            raise Unsupported("negative steps")
        size = shape[a]
        s = int(np.clip(s + size if s < 0 else s, 0, size))
        e = int(np.clip(e + size if e < 0 else e, 0, size))
        begin[a], end[a], stride[a] = s, e, int(st)
    x = ctx.get(node.inputs[0])
    consts = [ctx.constant(f"{node.name}_{k}", np.array(v, np.int32)) for k, v in
              (("begin", begin), ("end", end), ("strides", stride))]
    ctx.builder.op("STRIDED_SLICE", [x, *consts], [ctx.output(node.outputs[0], same_as=x)], "StridedSliceOptions")


@lowering("Resize")
def resize(ctx: LoweringContext, node: Node) -> None:
    in_shape, out_shape = ctx.shape(node.inputs[0]), ctx.shape(node.outputs[0])
    if len(in_shape) != 4 or in_shape[:2] != out_shape[:2]:
        raise Unsupported("resizing other than the two spatial axes of a 4-D tensor")
    mode = node.attrs.get("mode", "nearest")
    ct = node.attrs.get("coordinate_transformation_mode", "half_pixel")
    x = ctx.get(node.inputs[0], "nhwc")
    factors = [o // i if i and o % i == 0 else 0 for i, o in zip(in_shape[2:], out_shape[2:])]
    if ctx.resizable and all(factors):
        size = _runtime_shape(ctx, node.name, x, [1, *factors, 1], dims=(1, 3))
    else:
        size = ctx.constant(f"{node.name}_size", np.array(out_shape[2:], np.int32))
    y = ctx.output(node.outputs[0], "nhwc")
    if mode == "nearest":
        if ct != "asymmetric" or node.attrs.get("nearest_mode", "round_prefer_floor") != "floor":
            raise Unsupported(f"nearest with coordinate_transformation_mode={ct}")
        ctx.builder.op("RESIZE_NEAREST_NEIGHBOR", [x, size], [y], "ResizeNearestNeighborOptions")
    elif mode == "linear":
        flags = {"half_pixel": (False, True), "pytorch_half_pixel": (False, True), "align_corners": (True, False),
                 "asymmetric": (False, False)}.get(ct)
        if flags is None:
            raise Unsupported(f"linear with coordinate_transformation_mode={ct}")
        ctx.builder.op("RESIZE_BILINEAR", [x, size], [y], "ResizeBilinearOptions", AlignCorners=flags[0],
                       HalfPixelCenters=flags[1])
    else:
        raise Unsupported(f"mode={mode}")


def _runtime_shape(ctx: LoweringContext, name: str, x: int, scale: list[int], offset: list[int] | None = None,
                   dims: tuple[int, int] | None = None) -> int:
    """An int32 tensor ``shape(x) * scale + offset`` (NHWC ``x``), sliced to ``dims`` [begin, end), computed at
    run time (SHAPE, MUL, ADD, STRIDED_SLICE): a size derived from the input follows it when it is resized."""
    b = ctx.builder
    shape = b.tensor(f"{name}_in_shape", (4,), "int32")
    b.op("SHAPE", [x], [shape], "ShapeOptions", OutType=b.tfl.TensorType.INT32)
    scaled = b.tensor(f"{name}_scaled_shape", (4,), "int32")
    b.op("MUL", [shape, ctx.constant(f"{name}_scale", np.array(scale, np.int32))], [scaled], "MulOptions")
    if offset is not None:
        shifted = b.tensor(f"{name}_shifted_shape", (4,), "int32")
        b.op("ADD", [scaled, ctx.constant(f"{name}_offset", np.array(offset, np.int32))], [shifted], "AddOptions")
        scaled = shifted
    if dims is None:
        return scaled
    out = b.tensor(f"{name}_size", (dims[1] - dims[0],), "int32")
    b.op("STRIDED_SLICE", [scaled, *(ctx.constant(f"{name}_slice_{k}", np.array([v], np.int32))
                                     for k, v in (("begin", dims[0]), ("end", dims[1]), ("strides", 1)))],
         [out], "StridedSliceOptions")
    return out


@lowering("ConvTranspose")
def conv_transpose(ctx: LoweringContext, node: Node) -> None:
    a = node.attrs
    if a.get("group", 1) != 1 or any(d != 1 for d in a.get("dilations", [1, 1])) or any(a.get("output_padding", [0])):
        raise Unsupported("groups, dilations or output_padding")
    w = ctx.const_value(node.inputs[1])  # (Cin, Cout, kH, kW)
    k, s = w.shape[2:], a.get("strides", [1, 1])
    pads = list(a.get("pads", [0, 0, 0, 0]))
    if not any(pads):
        padding = ctx.builder.tfl.Padding.VALID
    elif all(pads[i] == max(k[i] - s[i], 0) // 2 and pads[i + 2] == max(k[i] - s[i], 0) - pads[i] for i in (0, 1)):
        padding = ctx.builder.tfl.Padding.SAME
    else:
        raise Unsupported(f"pads {pads} that TFLite's SAME/VALID cannot express")
    out_shape = ctx.shape(node.outputs[0])
    n, c, h, wd = out_shape
    x = ctx.get(node.inputs[0], "nhwc")
    filt = ctx.constant(f"{node.name}_filter", w.transpose(1, 2, 3, 0), weight=True)  # -> (Cout, kH, kW, Cin)
    if ctx.resizable:  # out = s * in + (k - s - pads): computed from the input when the model is resized
        offsets = [k[i] - s[i] - pads[i] - pads[i + 2] for i in (0, 1)]
        shape = _runtime_shape(ctx, f"{node.name}_output", x, [1, s[0], s[1], 0], [0, *offsets, c])
    else:
        shape = ctx.constant(f"{node.name}_output_shape", np.array([n, h, wd, c], np.int32))
    has_bias = len(node.inputs) > 2 and node.inputs[2]
    y = ctx.builder.tensor(f"{node.name}_nobias", (n, h, wd, c)) if has_bias else ctx.output(node.outputs[0], "nhwc")
    ctx.builder.op("TRANSPOSE_CONV", [shape, filt, x], [y], "TransposeConvOptions", Padding=padding,
                   StrideH=s[0], StrideW=s[1])
    if has_bias:
        bias = ctx.constant(f"{node.name}_bias", ctx.const_value(node.inputs[2]).astype(np.float32))
        ctx.builder.op("ADD", [y, bias], [ctx.output(node.outputs[0], "nhwc")], "AddOptions")


# Abramowitz & Stegun 7.1.26: |error| <= 1.5e-7 over the reals (TFLite has no ERF builtin).
_ERF_P = 0.3275911
_ERF_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


@lowering("Erf")
def erf(ctx: LoweringContext, node: Node) -> None:
    """erf(x) = sign(x) * (1 - poly(t) * t * exp(-x^2)), t = 1 / (1 + p|x|), from TFLite builtins."""
    layout = ctx.layout_of(node.inputs[0])
    x = ctx.get(node.inputs[0], layout)
    shape = ctx.builder.tensors[x].shape
    b, name = ctx.builder, node.name

    def t(tag: str) -> int:
        return b.tensor(f"{name}_{tag}", shape)

    def c(tag: str, v: float) -> int:
        return ctx.constant(f"{name}_{tag}", np.array([v], np.float32))

    ax, px, den, tt = t("abs"), t("px"), t("den"), t("t")
    b.op("ABS", [x], [ax])
    b.op("MUL", [ax, c("p", _ERF_P)], [px], "MulOptions")
    b.op("ADD", [px, c("one", 1.0)], [den], "AddOptions")
    b.op("DIV", [c("one_n", 1.0), den], [tt], "DivOptions")
    poly = c("a5", _ERF_A[4])
    for i in (3, 2, 1, 0):  # Horner: ((a5 t + a4) t + a3) t ...
        prod, acc = t(f"m{i}"), t(f"s{i}")
        b.op("MUL", [poly, tt], [prod], "MulOptions")
        b.op("ADD", [prod, c(f"a{i + 1}", _ERF_A[i])], [acc], "AddOptions")
        poly = acc
    poly_t, sq, nsq, ex, term, one_minus, sign = t("poly_t"), t("sq"), t("nsq"), t("exp"), t("term"), t("om"), t("sign")
    b.op("MUL", [poly, tt], [poly_t], "MulOptions")
    b.op("SQUARE", [x], [sq])
    b.op("NEG", [sq], [nsq])
    b.op("EXP", [nsq], [ex])
    b.op("MUL", [poly_t, ex], [term], "MulOptions")
    b.op("SUB", [c("one_s", 1.0), term], [one_minus], "SubOptions")
    b.op("SIGN", [x], [sign])
    b.op("MUL", [sign, one_minus], [ctx.output(node.outputs[0], layout)], "MulOptions")
