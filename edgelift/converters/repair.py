"""Say where an artifact breaks, and repair it with accuracy-aware mixed precision.

``layer_errors`` runs the fp32 graph and the artifact on the same samples with every intermediate tensor
exposed (ONNX Runtime for .onnx artifacts, LiteRT with all tensors preserved for .tflite) and compares the
tensors both hold, in graph order: cosine and relative L2 per node output. A node whose error is much larger
than its inputs' is where precision is lost. ``repair_candidates`` ranks nodes by that jump; the converter
keeps the top ones in float (``ConvertOptions.float_nodes``), doubling the count until the artifact passes its
gate — what users of onnx2tf and ORT quantization do by hand with ``nodes_to_exclude``.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import numpy as np

from ..core.tensors import InputSet
from ..runtimes.base import fixed_batch, iter_batches

LAYER_SAMPLES = 32  # samples the layer-wise comparison runs: enough to rank layers, cheap on big graphs
REPAIR_STEPS = (1, 2, 4, 8, 16, 32)  # heavy float-node counts tried, in order, until the gate holds
# ops whose weights carry the model: the ones a repair keeps quantized longest. Elementwise ops (a BatchNorm or
# hard-swish that paddle2onnx/tf2onnx decomposed into Mul/Add/Clip/Div) each add a requantization step and
# little compute, so the first repair keeps all of them in float.
HEAVY_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm", "MatMulNBits", "Gather"}
MAX_FLOAT_SHARE = 0.25  # never keep more than this share of the nodes in float: past it, the mode is wrong


@dataclass
class LayerError:
    node: str
    op_type: str
    tensor: str
    cosine: float
    rel_l2: float
    jump: float  # rel_l2 minus the largest rel_l2 among the node's compared inputs

    def to_dict(self) -> dict:
        return asdict(self)


def _with_all_outputs(model, float_only: bool = True):
    """``model`` with every typed node output also a graph output (ONNX shape inference gives the types)."""
    from onnx import TensorProto, helper, shape_inference

    m = copy.deepcopy(model)
    try:
        inferred = shape_inference.infer_shapes(m, strict_mode=False)
    except Exception:  # noqa: BLE001 - without inference only the declared value_info types are known
        inferred = m
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.output]}
    have = {o.name for o in m.graph.output}
    floats = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE)
    for node in m.graph.node:
        for name in node.output:
            t = types.get(name)
            if name and name not in have and t and (t in floats or not float_only):
                m.graph.output.append(helper.make_tensor_value_info(name, t, None))
                have.add(name)
    return m


def _run_exposed(model, data: InputSet, samples: int, reduce=None) -> dict[str, np.ndarray]:
    """Every float tensor of ``model`` on the first ``samples`` samples (or their ``reduce`` when given)."""
    from ..runtimes.ort import OrtSession

    session = OrtSession(_with_all_outputs(model).SerializeToString())
    head = data.head(samples)
    chunks: dict[str, list] = {}
    for feeds, valid in iter_batches(head, fixed_batch(session.inputs, head.unbatched), 16):
        for name, value in zip(session._output_names, session.session.run(None, feeds)):
            if not isinstance(value, np.ndarray) or not np.issubdtype(value.dtype, np.floating):
                continue
            chunks.setdefault(name, []).append(value if reduce is None else reduce(value))
    if reduce is not None:
        return {k: np.max(v) for k, v in chunks.items()}
    return {k: _stack(v) for k, v in chunks.items()}


def _stack(parts: list[np.ndarray]) -> np.ndarray:
    """Per-call values joined on their first axis (layouts kept: a TFLite NHWC tensor is matched later)."""
    try:
        return np.concatenate([p if p.ndim else p.reshape(1) for p in parts], axis=0)
    except ValueError:  # shapes that vary between calls: compare element order only
        return np.concatenate([p.ravel() for p in parts])


def activation_absmax(model, data: InputSet, shared: dict | None = None) -> dict[str, float]:
    """Largest |value| each float tensor of ``model`` takes on ``data`` (memoized per conversion in ``shared``)."""
    key = ("activation.absmax", id(model), data.source)
    if shared is not None and key in shared:
        return shared[key]
    def absmax(v: np.ndarray) -> float:
        finite = np.abs(v[np.isfinite(v)]) if v.size else v
        return float(finite.max()) if finite.size else 0.0

    out = _run_exposed(model, data, 64, reduce=absmax)
    if shared is not None:
        shared[key] = out
    return out


FP16_MAX = 65504.0  # the largest finite half-precision value


def fp16_overflow_nodes(model, nodes, data: InputSet | None, shared: dict | None = None) -> list[str]:
    """Names of ``nodes`` (``(name, input names, output names)``) whose inputs or outputs, measured on ``data``
    by ``model``, leave half of fp16's range: computed in fp16 they would reach inf (an intermediate sum or a
    square can double what the tensors show). One rule for the ONNX fp16 mode and Core ML's fp16 compute."""
    if data is None:
        return []
    absmax = activation_absmax(model, data, shared)
    return sorted(name for name, inputs, outputs in nodes
                  if any(absmax.get(t, 0.0) > FP16_MAX / 2 for t in [*inputs, *outputs] if t))


def _compare(ref: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    r, g = ref.astype(np.float64).ravel(), got.astype(np.float64).ravel()
    if r.shape != g.shape:
        return float("nan"), float("nan")
    rn, gn = np.linalg.norm(r), np.linalg.norm(g)
    diff = np.linalg.norm(g - r)
    rel = float(diff / rn) if rn > 0 else float(diff)
    cos = 1.0 if rn == 0 and gn == 0 else float(np.dot(r, g) / max(rn * gn, 1e-300))
    return cos, rel


def layer_errors(reference_model, artifact_tensors: dict[str, np.ndarray], data: InputSet) -> list[LayerError]:
    """Per node of ``reference_model`` (graph order) whose output the artifact also exposes: its error."""
    ref = _run_exposed(reference_model, data, LAYER_SAMPLES)
    errors: dict[str, float] = {}
    out = []
    for node in reference_model.graph.node:
        if node.op_type == "Constant":
            continue
        for name in node.output:
            if name not in ref or name not in artifact_tensors:
                continue
            got = _match_layout(ref[name], artifact_tensors[name])
            if got is None:
                continue
            cos, rel = _compare(ref[name], got)
            if not np.isfinite(rel):
                rel = float("inf")
            upstream = max((errors[i] for i in node.input if i in errors), default=0.0)
            errors[name] = rel
            out.append(LayerError(node.name, node.op_type, name, cos, rel, rel - upstream))
    return out


def _match_layout(ref: np.ndarray, got: np.ndarray) -> np.ndarray | None:
    """``got`` in ``ref``'s element order: as is, or moved from NHWC (TFLite stores 4-D activations NHWC)."""
    if got.size != ref.size:
        return None
    if got.shape == ref.shape or got.ndim != 4 or ref.ndim != 4:
        return got.reshape(ref.shape)
    if got.transpose(0, 3, 1, 2).shape == ref.shape:
        return got.transpose(0, 3, 1, 2)
    return got.reshape(ref.shape)


def onnx_artifact_tensors(artifact_model, data: InputSet) -> dict[str, np.ndarray]:
    """The artifact's tensors by the reference's names. Where a QuantizeLinear -> DequantizeLinear pair follows
    a tensor, its value is what the pair hands on: ORT's QDQ quantizer drops a Relu after a Conv and lets the
    quantization clamp, so the Conv output carries the Relu's name but not its values until then."""
    values = _run_exposed(artifact_model, data, LAYER_SAMPLES)
    q_of = {n.input[0]: n.output[0] for n in artifact_model.graph.node if n.op_type == "QuantizeLinear"}
    dq_of = {n.input[0]: n.output[0] for n in artifact_model.graph.node if n.op_type == "DequantizeLinear"}
    for name in list(values):
        dq = dq_of.get(q_of.get(name, ""), "")
        if dq in values:
            values[name] = values[dq]
    return values


def coreml_artifact_tensors(path, data: InputSet, names: dict[str, str]) -> dict[str, np.ndarray]:
    """Every value the saved ML Program computes for the first samples (the numpy MIL executor: Core ML itself runs
    only on Apple systems), as float32, keyed by ONNX tensor name through ``names`` (MIL name -> ONNX name)."""
    from .coreml.executor import MILReferenceSession
    from .coreml.lower import mil_name

    session = MILReferenceSession(path)
    chunks: dict[str, list] = {}
    head = data.head(LAYER_SAMPLES)
    for feeds, _ in iter_batches(head, 1):
        feeds = {**{mil_name(k): v for k, v in feeds.items()}, **feeds}  # inputs renamed to identifiers in the package
        cast = {s.name: np.asarray(feeds[s.name]).astype(s.dtype) for s in session.inputs if s.name in feeds}
        if len(cast) != len(session.inputs):
            return {}
        for mil, v in session.executor.run(cast, every_value=True).items():
            if mil in names and isinstance(v, np.ndarray) and np.issubdtype(v.dtype, np.floating):
                chunks.setdefault(names[mil], []).append(v.astype(np.float32))
    return {k: _stack(v) for k, v in chunks.items() if len(v) == head.num_samples}


def tflite_artifact_tensors(path, data: InputSet) -> dict[str, np.ndarray]:
    """Every tensor LiteRT computes for the first samples, dequantized, keyed by tensor name."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), experimental_preserve_all_tensors=True)
    interp.allocate_tensors()
    details = interp.get_tensor_details()
    inputs = {d["name"]: d for d in interp.get_input_details()}
    chunks: dict[str, list] = {}
    head = data.head(LAYER_SAMPLES)
    for feeds, _ in iter_batches(head, 1):
        for name, d in inputs.items():
            value = feeds.get(name)
            if value is None:
                return {}
            if value.shape != tuple(d["shape"]) and value.ndim == 4 and value.transpose(0, 2, 3, 1).shape == tuple(d["shape"]):
                value = value.transpose(0, 2, 3, 1)
            interp.set_tensor(d["index"], value.astype(d["dtype"]))
        interp.invoke()
        for d in details:
            try:
                v = interp.get_tensor(d["index"])
            except ValueError:
                continue
            scale, zero = d["quantization"]
            if np.issubdtype(v.dtype, np.integer) and scale:
                v = (v.astype(np.float32) - zero) * np.float32(scale)
            if np.issubdtype(v.dtype, np.floating):
                chunks.setdefault(d["name"], []).append(np.array(v))
    return {k: _stack(v) for k, v in chunks.items() if len(v) == head.num_samples}


def _eligible_upstream(node, producer: dict, eligible: set[str]) -> list[str]:
    """The nearest eligible nodes at or above ``node`` (through Relu, Reshape and other nodes a quantized artifact
    does not keep as such)."""
    out, frontier, seen = [], [node], set()
    while frontier:
        n = frontier.pop()
        if n is None or n.name in seen:
            continue
        seen.add(n.name)
        if n.name in eligible:
            out.append(n.name)
            continue
        frontier.extend(producer.get(i) for i in n.input if i in producer)
    return out


def repair_candidates(errors: list[LayerError], eligible: set[str], reference_model) -> list[list[str]]:
    """Groups of nodes to keep in float, most damaging first, ranked by how much error each adds. A jump seen at
    a node the artifact cannot keep in float (a Relu folded into its Conv's quantization, a Reshape) is charged to
    the nearest eligible nodes upstream. Each group also holds the eligible producers of the node's inputs: the
    error of a quantized input (one outlier channel stretching a per-tensor range) shows only in its consumer, and
    keeping the consumer float does not help while its input is still quantized."""
    producer = {o: n for n in reference_model.graph.node for o in n.output if o}
    by_name = {n.name: n for n in reference_model.graph.node}
    groups: list[list[str]] = []
    seen: set[str] = set()
    for e in sorted((e for e in errors if e.jump > 0), key=lambda e: -e.jump):
        for name in _eligible_upstream(by_name.get(e.node), producer, eligible):
            if name in seen:
                continue
            inputs = [p for i in by_name[name].input if i in producer
                      for p in _eligible_upstream(producer[i], producer, eligible)]
            group = [name] + [p for p in dict.fromkeys(inputs) if p not in seen and p != name]
            seen.update(group)
            groups.append(group)
    return groups


def repair_plans(errors: list[LayerError], eligible: set[str], reference_model, mode: str) -> list[frozenset[str]]:
    """The float-node sets to try, in order. Quantized modes first keep every eligible light (elementwise) node
    in float, then add the groups of heavy nodes that add the most error, doubling; fp16 adds the most damaging
    nodes of any kind. No plan keeps more than ``MAX_FLOAT_SHARE`` of the graph's heavy nodes (at least two)."""
    ops = {n.name: n.op_type for n in reference_model.graph.node}
    groups = repair_candidates(errors, eligible, reference_model)
    plans: list[frozenset[str]] = []
    if mode == "fp16":
        light, heavy_groups = frozenset(), groups
        limit = max(2, int(MAX_FLOAT_SHARE * len(ops)))
    else:
        light = frozenset(n for n in eligible if ops.get(n) not in HEAVY_OPS and n in ops)
        heavy_groups = [g for g in ([n for n in grp if ops.get(n) in HEAVY_OPS] for grp in groups) if g]
        limit = max(2, int(MAX_FLOAT_SHARE * sum(1 for op in ops.values() if op in HEAVY_OPS)))
        if light:
            plans.append(light)
    for count in REPAIR_STEPS:
        chosen = [n for g in heavy_groups[:count] for n in g][:limit]
        if not chosen:
            break
        plans.append(light | frozenset(chosen))
        if count >= len(heavy_groups) or len(chosen) >= limit:
            break
    return list(dict.fromkeys(plans))


def first_breaks(errors: list[LayerError], count: int = 3) -> list[LayerError]:
    """The first layers (graph order) where the error jumps: above a tenth of the worst jump."""
    worst = max((e.jump for e in errors), default=0.0)
    return [e for e in errors if worst > 0 and e.jump >= 0.1 * worst][:count]
