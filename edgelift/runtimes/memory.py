"""Activation-memory planning for ONNX graphs: schedule, tensor lifetimes, the bytes in use at each op.

Shapes and dtypes come from ONNX Runtime itself: the graph is run once at batch 1 with every tensor
as an output, so any op ORT runs is planned exactly. Quantized (QDQ) graphs are planned as ORT
executes them: QuantizeLinear/DequantizeLinear pairs around an op fold into one int8 op, so
activations count at one byte per element.

Accounting (MCUNet's): while an op runs, its inputs, its output and every tensor still needed later
are resident. Depthwise convolutions and elementwise ops write into an input that dies there, so
they count once (MobileNetV2-224 with int8 activations peaks at 1,404,928 B this way, MCUNetV2's
baseline figure).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.onnx_proto import Node, OnnxGraph, ValueInfo, encode, read_onnx_graph
from ..core.tensors import TensorSpec, checked_sizes
from ..errors import EdgeError, ModelFormatError
from .budget import human_bytes, parse_budget  # noqa: F401  (their home before the load path needed them light)

ELEMENTWISE = {"Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu", "Tanh", "Add", "Mul", "Sub", "Div",
               "BatchNormalization", "Identity", "Dropout", "PRelu", "Elu", "Selu", "Softplus", "Erf"}


@dataclass
class Op:
    """One scheduled op of the logical graph (QDQ folded): what it reads, writes and costs."""

    index: int
    name: str
    op_type: str
    inputs: list[str]  # activation tensors (no weights)
    output: str
    macs: int
    in_place: bool = False
    live_bytes: int = 0  # activation memory while it runs


@dataclass
class MemoryPlan:
    ops: list[Op]
    sizes: dict[str, int]  # activation tensor -> bytes
    shapes: dict[str, tuple[int, ...]]
    graph_inputs: list[str]
    graph_outputs: list[str]
    quantized: bool
    nodes_of: dict[str, list[int]] = field(default_factory=dict)  # logical output -> graph node indices
    dtypes: dict[str, str] = field(default_factory=dict)
    constants: set[str] = field(default_factory=set)  # weights and what is computed from them alone

    def is_activation(self, t: str) -> bool:
        return bool(t) and t not in self.constants and t in self.shapes

    @property
    def peak_bytes(self) -> int:
        return max(op.live_bytes for op in self.ops)

    @property
    def peak_op(self) -> Op:
        return max(self.ops, key=lambda op: op.live_bytes)

    @property
    def total_macs(self) -> int:
        return sum(op.macs for op in self.ops)


def load_graph(model: str | Path | bytes) -> tuple[OnnxGraph, bytes]:
    """The graph (external weights read in from the model's folder) and the file's bytes."""
    if isinstance(model, (str, Path)):
        p = Path(model)
        if not p.is_file():
            raise ModelFormatError(f"{p} does not exist")
        from ..core.formats import ModelFormat, detect_format

        fmt = detect_format(p)
        if fmt is not ModelFormat.ONNX:
            raise ModelFormatError(f"{p} is a {fmt.value} model; memory planning reads ONNX graphs: convert it first "
                                   f"(edge convert {p.name} --to onnx) and plan the .onnx file")
        data = p.read_bytes()
        try:
            return read_onnx_graph(data, p.parent), data
        except ModelFormatError as e:
            raise ModelFormatError(f"{p}: {e}") from e
    data = bytes(model)
    return read_onnx_graph(data), data


def constant_tensors(graph: OnnxGraph) -> set[str]:
    """Initializers and everything computed from them alone (weights dequantized, folded shapes)."""
    const = set(graph.initializers)
    for n in graph.nodes:
        if all(i in const for i in n.inputs if i):
            const.update(n.outputs)
    return const


def probe_shapes(graph: OnnxGraph, batch: int = 1) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every tensor's shape and dtype, from one ONNX Runtime run at ``batch`` on zeros."""
    import onnxruntime as ort

    class _NameOnly(ValueInfo):
        def encode(self) -> bytes:  # ORT infers the type of an output declared by name only
            return encode([(1, 2, self.name.encode())])

    names = list(dict.fromkeys(o for n in graph.nodes for o in n.outputs if o))
    sub = graph.submodel(graph.nodes, graph.inputs, [_NameOnly(o, "float32", ()) for o in names], "probe")
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    specs = [TensorSpec(v.name, tuple(batch if not isinstance(d, int) else d for d in v.shape), v.dtype)
             for v in graph.inputs]
    try:
        feeds = {s.name: np.zeros(s.shape, s.dtype) for s in checked_sizes(specs)}
        sess = ort.InferenceSession(sub, so, providers=["CPUExecutionProvider"])
        out = sess.run(None, feeds)
    except (EdgeError, MemoryError):
        raise
    except Exception as e:  # ONNX Runtime's Fail / InvalidGraph / InvalidArgument / NotImplemented
        text = " ".join(str(e).split())[:200] or type(e).__name__
        raise ModelFormatError(f"ONNX Runtime cannot run the model to learn its tensor shapes: {text}") from e
    info = {v.name: (tuple(feeds[v.name].shape), str(feeds[v.name].dtype)) for v in graph.inputs}
    for o, a in zip(names, out):
        info[o] = (tuple(a.shape), str(a.dtype))
    return info


def _macs(node: Node, shapes) -> int:
    if node.op_type in ("Conv", "ConvInteger", "QLinearConv"):
        w = shapes.get(node.inputs[1 if node.op_type != "QLinearConv" else 3])
        out = shapes.get(node.outputs[0])
        if w and out:
            return int(np.prod(out[0])) * int(np.prod(w[0][1:]))
    if node.op_type in ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul"):
        a, out = shapes.get(node.inputs[0]), shapes.get(node.outputs[0])
        if a and out:
            return int(np.prod(out[0])) * int(a[0][-1])
    return 0


def plan_memory(model: str | Path | bytes | OnnxGraph, batch: int = 1,
                shapes: dict | None = None) -> MemoryPlan:
    """The activation-memory profile of ``model`` at ``batch``, op by op, QDQ folded."""
    graph = model if isinstance(model, OnnxGraph) else load_graph(model)[0]
    shapes = dict(shapes or probe_shapes(graph, batch))
    for name, t in graph.initializers.items():  # weights: their shapes decide MACs and depthwise-ness
        shapes.setdefault(name, (t.dims, t.dtype))
    const = constant_tensors(graph)
    producer = {o: i for i, n in enumerate(graph.nodes) for o in n.outputs}
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(graph.nodes):
        for t in n.inputs:
            consumers.setdefault(t, []).append(i)

    def is_act(t: str) -> bool:
        return bool(t) and t not in const and t in shapes

    def resolve(t: str) -> str:  # through DequantizeLinear to the stored (int8) tensor
        while t in producer and graph.nodes[producer[t]].op_type == "DequantizeLinear" \
                and is_act(graph.nodes[producer[t]].inputs[0]):
            t = graph.nodes[producer[t]].inputs[0]
        return t

    quantized = any(n.op_type == "QuantizeLinear" for n in graph.nodes)
    graph_inputs = [v.name for v in graph.inputs]
    ops: list[Op] = []
    nodes_of: dict[str, list[int]] = {}
    for i, n in enumerate(graph.nodes):
        if not n.outputs or not is_act(n.outputs[0]):
            continue
        if n.op_type == "DequantizeLinear":
            continue  # folded into its consumer
        if n.op_type == "QuantizeLinear" and n.inputs[0] not in graph_inputs:
            continue  # folded into its producer
        out = n.outputs[0]
        group = [i]
        users = consumers.get(out, [])
        if len(users) == 1 and graph.nodes[users[0]].op_type == "QuantizeLinear":
            group.append(users[0])
            out = graph.nodes[users[0]].outputs[0]
        ins = list(dict.fromkeys(resolve(t) for t in n.inputs if is_act(t)))
        ops.append(Op(len(ops), n.name or f"{n.op_type}_{i}", n.op_type, ins, out, _macs(n, shapes),
                      _in_place(n, shapes)))
        nodes_of[out] = group
    sizes = {}
    for t, (shape, dtype) in shapes.items():
        if (is_act(t) or t in graph_inputs) and t not in graph.initializers:
            sizes[t] = int(np.prod(shape)) * np.dtype(dtype).itemsize
    plan = MemoryPlan(ops, sizes, {t: s for t, (s, _) in shapes.items()}, graph_inputs,
                      [resolve(v.name) for v in graph.outputs], quantized, nodes_of,
                      {t: d for t, (_, d) in shapes.items()}, const)
    simulate(plan.ops, plan.sizes, plan.graph_outputs)
    return plan


def _in_place(node: Node, shapes) -> bool:
    if node.op_type in ELEMENTWISE:
        return True
    if node.op_type == "Conv":
        w = shapes.get(node.inputs[1])
        group = int(node.attr("group", 1))
        return bool(w) and group > 1 and group == w[0][0] and w[0][1] == 1  # depthwise
    return False


def simulate(ops: list[Op], sizes: dict[str, int], keep: list[str], resident: int = 0) -> None:
    """Fill ``op.live_bytes``: what is resident while each op runs (``resident`` bytes held throughout)."""
    last_use: dict[str, int] = {}
    for op in ops:
        for t in op.inputs:
            last_use[t] = op.index
    for t in keep:
        last_use[t] = len(ops)
    live: dict[str, int] = {}
    for op in ops:
        for t in op.inputs:
            live.setdefault(t, sizes.get(t, 0))  # graph inputs (or patch inputs) appear when first read
        out = sizes.get(op.output, 0)
        dying = [t for t in op.inputs if last_use.get(t, -1) <= op.index]
        reuse = op.in_place and any(live.get(t, 0) >= out for t in dying)
        op.live_bytes = resident + sum(live.values()) + (0 if reuse else out)
        for t in dying:
            live.pop(t, None)
        if last_use.get(op.output, -1) > op.index:
            live[op.output] = out
