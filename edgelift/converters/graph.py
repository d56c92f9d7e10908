"""An ONNX graph prepared for lowering to another format (TFLite now, Core ML MIL next).

``prepare_graph`` fixes the batch size, folds constants (shape arithmetic included) with the
onnxscript optimizer, infers every tensor's static shape, and hands back plain Python: nodes with
decoded attributes, constants as numpy arrays, shapes and dtypes. Lowerings read this, never protobuf.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConversionError, require


@dataclass
class Node:
    name: str
    op_type: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict = field(default_factory=dict)
    domain: str = ""


@dataclass
class Graph:
    nodes: list[Node]
    inputs: list[str]
    outputs: list[str]
    constants: dict[str, np.ndarray]
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, np.dtype]
    model: object = None  # the prepared onnx.ModelProto these nodes came from (for calibration runs)

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self.shapes:
            raise ConversionError(f"no static shape known for tensor '{name}'")
        return self.shapes[name]

    def const(self, name: str) -> np.ndarray | None:
        return self.constants.get(name)


def describe_nodes(nodes: list[tuple[str, str]], what: str) -> str:
    """``nodes`` ((name, op type) pairs) for a one-line error: every op type with its count, then names."""
    from collections import Counter

    from ..errors import shown

    counts = Counter(op for _, op in nodes)
    kinds = ", ".join(f"{shown(op, 60)} ×{n}" for op, n in counts.most_common())
    names = ", ".join(shown(name, 40) for name, _ in nodes[:8]) + (" ..." if len(nodes) > 8 else "")
    return f"{len(nodes)} node(s) {what}: {kinds} (nodes: {names})"


def shared_graph(base_model, shared: dict) -> Graph:
    """The prepared graph of ``base_model``, built once per conversion for every target and mode."""
    if "lowering.graph" not in shared:
        shared["lowering.graph"] = prepare_graph(base_model, shapes=shared.get("lowering.shapes"))
    return shared["lowering.graph"]


def graph_at(base_model, shared: dict, shapes: dict[str, tuple[int, ...]]) -> Graph:
    """The prepared graph at other input ``shapes`` (a resizable artifact is lowered again at a grown size),
    built once per shapes per conversion."""
    graphs = shared.setdefault("lowering.graph.at", {})
    key = tuple(sorted(shapes.items()))
    if key not in graphs:
        graphs[key] = prepare_graph(base_model, shapes=shapes)
    return graphs[key]


def prepare_graph(model, batch: int = 1, shapes: dict[str, tuple[int, ...]] | None = None) -> Graph:
    """Static-shape, constant-folded view of ``model``: inputs get ``shapes`` (settled by
    ``converters.signature``: never a silent guess); without them symbolic dims must be batch axes, set
    to ``batch``."""
    require("onnx", "convert", "Lowering ONNX graphs")
    from onnx import helper, numpy_helper, shape_inference

    from .torch_export import one_line, quiet_exporter

    m = copy.deepcopy(model)
    for v in m.graph.input:
        fixed = (shapes or {}).get(v.name)
        for i, d in enumerate(v.type.tensor_type.shape.dim):
            if fixed is not None:
                d.Clear()
                d.dim_value = fixed[i]
            elif not d.HasField("dim_value") or d.dim_value < 0:
                d.Clear()
                d.dim_value = batch
    try:
        from onnxscript import optimizer

        with quiet_exporter():
            m = optimizer.optimize(m)
        canonicalize(m)
        # Shapes recorded by the exporter may hold symbolic dims that now conflict with the fixed
        # batch (TorchScript traces write them); inference from the inputs alone is exact.
        del m.graph.value_info[:]
        for v in m.graph.output:
            if any(not d.HasField("dim_value") for d in v.type.tensor_type.shape.dim):
                v.type.tensor_type.ClearField("shape")
        m = shape_inference.infer_shapes(m, strict_mode=False, data_prop=True)
    except Exception as e:
        raise ConversionError(f"cannot prepare the ONNX graph for lowering: {one_line(e)}") from e

    # Folding can reveal shapes inference could not see (an Expand whose target shape comes from
    # ConstantOfShape/Where chains, as TorchScript traces write): fold, re-infer, until stable.
    for _ in range(6):
        nodes, constants, shapes, dtypes, folded = _collect(m)
        decided: dict[str, bool | None] = {n.outputs[0]: bool(np.asarray(constants[n.inputs[0]]).reshape(-1)[0])
                                           for n in nodes if n.op_type == "If" and n.inputs[0] in constants}
        if not decided and any(n.op_type == "If" for n in nodes):
            decided = _selectable_ifs(_rebuilt(m, nodes, constants))  # data-dependent: computed both ways
        if not decided and (not folded or all(o in shapes for n in nodes for o in n.outputs if o)):
            break
        m = _rebuilt(m, nodes, constants)
        if decided:
            _inline_ifs(m, decided)
        try:
            m = shape_inference.infer_shapes(m, strict_mode=False, data_prop=True)
        except Exception as e:
            raise ConversionError(f"cannot infer the ONNX graph's shapes: {one_line(e)}") from e
    init = set(constants)
    inputs = [v.name for v in m.graph.input if v.name not in init]
    normalize_attributes(nodes, shapes, constants)
    return Graph(nodes, inputs, [v.name for v in m.graph.output], constants, shapes, dtypes, m)


_REDUCE = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2", "ReduceL1",
           "ReduceLogSumExp", "ReduceSumSquare")
_AUTO_PAD = ("Conv", "ConvTranspose", "MaxPool", "AveragePool")


def normalize_attributes(nodes: list[Node], shapes: dict, constants: dict) -> None:
    """ONNX attribute semantics settled once, here, for every lowering (they read only the normalized form):

    - reductions: ``axes`` always an attribute (opset 18 moved it to an input), non-negative and sorted, all axes
      when absent; ``noop_with_empty_axes`` with no axes becomes an Identity;
    - ``auto_pad`` SAME_UPPER / SAME_LOWER / VALID become explicit ``pads`` (static shapes give them);
    - nearest Resize by whole factors: every coordinate mode that picks the same pixels as (asymmetric, floor)
      is written as that one (torch writes half_pixel + round_prefer_floor, paddle asymmetric + floor)."""
    for n in nodes:
        if n.domain not in ("", "ai.onnx"):
            continue
        if n.op_type in _REDUCE and n.inputs and n.inputs[0] in shapes:
            rank = len(shapes[n.inputs[0]])
            axes = n.attrs.get("axes")
            if axes is None and len(n.inputs) > 1 and n.inputs[1]:
                if n.inputs[1] not in constants:
                    continue
                axes = np.asarray(constants[n.inputs[1]]).reshape(-1).tolist()
            if not axes and n.attrs.get("noop_with_empty_axes", 0):
                n.op_type, n.inputs, n.attrs = "Identity", n.inputs[:1], {}
                continue
            n.attrs["axes"] = sorted({int(a) % rank for a in axes}) if axes else list(range(rank))
            n.attrs.pop("noop_with_empty_axes", None)
            n.inputs = n.inputs[:1]
        elif n.op_type in _AUTO_PAD and n.attrs.get("auto_pad", "NOTSET") != "NOTSET" and n.inputs[0] in shapes:
            _explicit_pads(n, shapes[n.inputs[0]], constants)
        elif n.op_type == "Resize" and n.attrs.get("mode", "nearest") == "nearest" and n.inputs[0] in shapes \
                and n.outputs[0] in shapes:
            src, dst = shapes[n.inputs[0]], shapes[n.outputs[0]]
            factors = [b / a for a, b in zip(src, dst) if a]
            whole = len(factors) == len(src) and all(f >= 1 and f == int(f) for f in factors)
            ct = n.attrs.get("coordinate_transformation_mode", "half_pixel")
            rounding = n.attrs.get("nearest_mode", "round_prefer_floor")
            same = (ct in ("half_pixel", "pytorch_half_pixel") and rounding in ("round_prefer_floor", "round_prefer_ceil")) \
                or (ct == "asymmetric" and rounding in ("floor", "round_prefer_floor"))
            if whole and same:
                n.attrs["coordinate_transformation_mode"], n.attrs["nearest_mode"] = "asymmetric", "floor"


def _explicit_pads(n: Node, in_shape: tuple[int, ...], constants: dict) -> None:
    mode = n.attrs.pop("auto_pad")
    spatial = len(in_shape) - 2
    if mode == "VALID":
        n.attrs["pads"] = [0] * (2 * spatial)
        return
    if n.op_type in ("Conv", "ConvTranspose"):
        w = constants.get(n.inputs[1]) if len(n.inputs) > 1 else None
        kernel = list(n.attrs.get("kernel_shape") or ([] if w is None else list(w.shape[2:])))
    else:
        kernel = list(n.attrs.get("kernel_shape", []))
    if len(kernel) != spatial:
        n.attrs["auto_pad"] = mode  # cannot tell: leave it for the lowering to refuse
        return
    strides = list(n.attrs.get("strides", [1] * spatial))
    dilations = list(n.attrs.get("dilations", [1] * spatial))
    begin, end = [], []
    for size, k, s, d in zip(in_shape[2:], kernel, strides, dilations):
        if n.op_type == "ConvTranspose":
            total = max(0, (k - 1) * d + 1 - s)
        else:
            out = -(-size // s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small, big = total // 2, total - total // 2
        begin.append(small if mode == "SAME_UPPER" else big)
        end.append(big if mode == "SAME_UPPER" else small)
    n.attrs["pads"] = begin + end


SELECT_IF_MAX_NODES = 256  # a data-dependent If is computed both ways only when its branches are this small


def _inline_ifs(m, decided: dict[str, bool | None]) -> None:
    """Replace each If (keyed by its first output) with plain nodes. Where static shapes decided the condition
    (``True``/``False``: torch 1.12 guards rank-dependent code with If) only the branch taken is kept. Where the
    condition is data (``None``: openWakeWord's heads verify a detection above a threshold) both small branches
    are computed and ``Where(cond, then, else)`` picks the result, as onnx2tf does. Names made inside a branch get
    the If's output name and the branch as prefix."""
    from onnx import helper

    nodes = []
    for n in m.graph.node:
        if n.op_type != "If" or not n.output or n.output[0] not in decided:
            nodes.append(n)
            continue
        choice = decided[n.output[0]]
        keys = ["then_branch", "else_branch"] if choice is None else ["then_branch" if choice else "else_branch"]
        results = []
        for key in keys:
            branch = next(a.g for a in n.attribute if a.name == key)
            prefix = f"{n.output[0]}/{key}/"
            made = {o for bn in branch.node for o in bn.output if o} | {t.name for t in branch.initializer}

            def renamed(x: str, prefix=prefix, made=made) -> str:
                return prefix + x if x in made else x

            for t in branch.initializer:
                c = type(t)()
                c.CopyFrom(t)
                c.name = renamed(t.name)
                m.graph.initializer.append(c)
            for bn in branch.node:
                c = type(bn)()
                c.CopyFrom(bn)
                c.name = prefix + (bn.name or bn.op_type)
                c.input[:] = [renamed(i) for i in bn.input]
                c.output[:] = [renamed(o) for o in bn.output]
                nodes.append(c)
            results.append([renamed(o.name) for o in branch.output])
        for i, out in enumerate(n.output):
            if choice is None:
                nodes.append(helper.make_node("Where", [n.input[0], results[0][i], results[1][i]], [out],
                                              name=f"{n.output[0]}/select_{i}"))
            else:
                nodes.append(helper.make_node("Identity", [results[0][i]], [out], name=f"{n.output[0]}/out_{i}"))
    del m.graph.node[:]
    m.graph.node.extend(nodes)


def _selectable_ifs(m) -> dict[str, None]:
    """Data-dependent Ifs small enough to compute both ways (see ``_inline_ifs``), without nested graphs."""
    from onnx import AttributeProto

    out = {}
    for n in m.graph.node:
        if n.op_type != "If" or not n.output:
            continue
        branches = [a.g for a in n.attribute if a.type == AttributeProto.GRAPH]
        nested = any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for g in branches for bn in g.node
                     for a in bn.attribute)
        if len(branches) == 2 and not nested and sum(len(g.node) for g in branches) <= SELECT_IF_MAX_NODES:
            out[n.output[0]] = None
    return out


def canonicalize(m) -> None:
    """Rewrite ONNX forms the lowerings need not each learn, once, in the graph every target lowers (and
    calibration runs): a 1-D convolution (audio front-ends, Silero's STFT) becomes Unsqueeze -> 2-D Conv
    (height 1) -> Squeeze."""
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in m.graph.initializer}
    consts = {n.output[0]: n for n in m.graph.node if n.op_type == "Constant" and n.attribute}
    nodes = []
    for n in m.graph.node:
        w_name = n.input[1] if n.op_type in ("Conv", "ConvTranspose") and len(n.input) > 1 else None
        w = None
        if w_name in inits:
            w = numpy_helper.to_array(inits[w_name])
        elif w_name in consts:
            w = _constant_value(consts[w_name].attribute[0])
        if w is None or w.ndim != 3 or n.domain not in ("", "ai.onnx"):
            nodes.append(n)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
        for key, pad_value in (("kernel_shape", 1), ("strides", 1), ("dilations", 1), ("output_padding", 0)):
            if key in attrs:
                attrs[key] = [pad_value, *attrs[key]]
        if "pads" in attrs:
            attrs["pads"] = [0, attrs["pads"][0], 0, attrs["pads"][1]]
        if "output_shape" in attrs:
            attrs["output_shape"] = [1, *attrs["output_shape"]]
        w2 = f"{w_name}_2d"
        m.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w[:, :, None, :]), w2))
        axes = f"{n.name or n.output[0]}_axis2"
        m.graph.initializer.append(numpy_helper.from_array(np.array([2], np.int64), axes))
        x2, y2 = f"{n.input[0]}_2d_for_{n.name}", f"{n.output[0]}_2d"
        nodes.append(helper.make_node("Unsqueeze", [n.input[0], axes], [x2], name=f"{n.name}_to_2d"))
        nodes.append(helper.make_node(n.op_type, [x2, w2, *n.input[2:]], [y2], name=n.name, **attrs))
        nodes.append(helper.make_node("Squeeze", [y2, axes], [n.output[0]], name=f"{n.name}_to_1d"))
    del m.graph.node[:]
    m.graph.node.extend(nodes)


def _collect(m):
    """Plain-Python nodes, constants, static shapes and dtypes of ``m``, constant nodes folded."""
    from onnx import helper, numpy_helper

    constants = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    nodes = []
    for n in m.graph.node:
        if n.op_type == "Constant":
            value = next(a for a in n.attribute)
            constants[n.output[0]] = _constant_value(value)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
        nodes.append(Node(n.name or f"{n.op_type}_{len(nodes)}", n.op_type, list(n.input), list(n.output),
                          attrs, n.domain))
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, np.dtype] = {}
    for v in [*m.graph.input, *m.graph.value_info, *m.graph.output]:
        tt = v.type.tensor_type
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            shapes[v.name] = tuple(int(d.dim_value) for d in tt.shape.dim)
        if tt.elem_type:
            dtypes[v.name] = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))
    for name, value in constants.items():
        shapes[name], dtypes[name] = tuple(value.shape), value.dtype
    kept = _fold_constant_nodes(nodes, constants, shapes, dtypes, m)
    return kept, constants, shapes, dtypes, len(kept) < len(nodes)


def _rebuilt(m, nodes: list[Node], constants: dict[str, np.ndarray]):
    """``m`` with only ``nodes`` left and the constants they read as initializers."""
    from onnx import numpy_helper

    keep = {n.outputs[0] for n in nodes}
    protos = [n for n in m.graph.node if n.op_type != "Constant" and n.output[0] in keep]
    used = {i for n in protos for i in n.input} | {v.name for v in m.graph.output}
    used |= _subgraph_reads(protos)  # outer-scope names an If/Loop body reads
    out = type(m)()
    out.CopyFrom(m)
    del out.graph.node[:], out.graph.initializer[:], out.graph.value_info[:]
    out.graph.node.extend(protos)
    out.graph.initializer.extend(numpy_helper.from_array(np.asarray(v), k) for k, v in constants.items() if k in used)
    return out


def _subgraph_reads(protos) -> set[str]:
    from onnx import AttributeProto

    names: set[str] = set()
    stack = [a.g for n in protos for a in n.attribute if a.type == AttributeProto.GRAPH]
    stack += [g for n in protos for a in n.attribute if a.type == AttributeProto.GRAPHS for g in a.graphs]
    while stack:
        g = stack.pop()
        for n in g.node:
            names.update(n.input)
            stack.extend(a.g for a in n.attribute if a.type == AttributeProto.GRAPH)
            stack.extend(sg for a in n.attribute if a.type == AttributeProto.GRAPHS for sg in a.graphs)
    return names


# Folds where onnx's reference evaluator is wrong or missing (its GatherElements fails on some shapes).
_NUMPY_FOLDS = {
    "GatherElements": lambda ins, a: np.take_along_axis(ins[0], ins[1].astype(np.int64), axis=a.get("axis", 0)),
}


def _fold_constant_nodes(nodes: list[Node], constants, shapes, dtypes, model) -> list[Node]:
    """Evaluate (with onnx's reference implementation) nodes whose inputs are all constants and
    that the optimizer left alone, e.g. GatherElements over a position-id table."""
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 18)
    kept = []
    for n in nodes:
        if n.op_type in ("Shape", "Size") and n.domain in ("", "ai.onnx") and n.inputs[0] in shapes:
            dims = np.array(shapes[n.inputs[0]], np.int64)  # static now that the batch is fixed
            v = dims[n.attrs.get("start", 0):n.attrs.get("end", len(dims))] if n.op_type == "Shape" \
                else np.array(dims.prod(), np.int64)
            constants[n.outputs[0]], shapes[n.outputs[0]], dtypes[n.outputs[0]] = v, tuple(v.shape), v.dtype
            continue
        if n.domain in ("", "ai.onnx") and n.inputs and all(i in constants for i in n.inputs if i):
            if n.op_type in _NUMPY_FOLDS:
                v = np.asarray(_NUMPY_FOLDS[n.op_type]([constants[i] for i in n.inputs], n.attrs))
                constants[n.outputs[0]], shapes[n.outputs[0]], dtypes[n.outputs[0]] = v, tuple(v.shape), v.dtype
                continue
            proto = helper.make_node(n.op_type, n.inputs, n.outputs, **n.attrs)
            try:
                inits = [numpy_helper.from_array(np.asarray(constants[i]), i) for i in dict.fromkeys(n.inputs) if i]
                ev = ReferenceEvaluator(helper.make_model(
                    helper.make_graph([proto], "fold", [], [helper.make_tensor_value_info(o, 0, None) for o in n.outputs],
                                      inits),
                    opset_imports=[helper.make_opsetid("", opset)]))
                values = ev.run(None, {})
            except Exception:
                kept.append(n)
                continue
            for o, v in zip(n.outputs, values):
                v = np.asarray(v)
                constants[o], shapes[o], dtypes[o] = v, tuple(v.shape), v.dtype
            continue
        kept.append(n)
    return kept


def _constant_value(attr) -> np.ndarray:
    from onnx import helper, numpy_helper

    v = helper.get_attribute_value(attr)
    if hasattr(v, "dims"):
        return numpy_helper.to_array(v)
    return np.asarray(v)
