"""Load, check, clean and describe ONNX graphs (the converter side: needs the ``onnx`` package)."""

from __future__ import annotations

import os
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.onnx_summary import DtypeStats, WeightSummary  # noqa: F401 - re-exported
from ..core.tensors import TensorSpec
from ..errors import ModelFormatError, UnsupportedOperatorError, require

# Models whose weights pass this many bytes are saved with external data (protobuf's 2 GB limit).
EXTERNAL_DATA_THRESHOLD_BYTES = 1_800_000_000


def _onnx():
    return require("onnx", "convert", "Reading ONNX graphs")


def load_model(path: str | Path, check: bool = True):
    """Parse and validate an ONNX file; truncated, corrupted or foreign files raise ModelFormatError."""
    onnx = _onnx()
    p = Path(path)
    if not p.is_file():
        raise ModelFormatError(f"{p} is not a file; pass the path of an .onnx model")
    try:
        model = onnx.load(str(p), load_external_data=True)
    except Exception as e:  # DecodeError, missing external data, ...
        raise ModelFormatError(
            f"{p} is not a valid ONNX model ({type(e).__name__}: {str(e)[:120]}); "
            "it may be truncated or corrupted: export it again"
        ) from e
    require_text(model, p)
    if check:
        check_model(model, str(p))
    return model


def require_text(message, path, where: str = "") -> None:
    """Every string field of the model holds text: protobuf hands back ``bytes`` for a string field that is not
    UTF-8 (proto2), and every later use (op lookup, names) would fail on it with a TypeError."""
    from google.protobuf.descriptor import FieldDescriptor

    stack = [(message, where or "model")]
    while stack:
        msg, at = stack.pop()
        for field, value in msg.ListFields():
            repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED
            if field.type == FieldDescriptor.TYPE_STRING:
                values = value if repeated else [value]
                if any(not isinstance(v, str) for v in values):
                    raise ModelFormatError(f"{path}: {at}.{field.name} is not valid UTF-8 text; the file is corrupted")
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                values = value if repeated else [value]
                stack.extend((v, f"{at}.{field.name}") for v in values)


def check_model(model, where: str) -> None:
    onnx = _onnx()
    if not model.graph.node and not model.graph.output:
        raise ModelFormatError(f"{where} holds no ONNX graph; it may be truncated: export it again")
    unknown = [(n.name, n.op_type) for n in model.graph.node
               if n.domain in ("", "ai.onnx") and not onnx.defs.has(n.op_type)]
    if unknown:
        listed = ", ".join(f"{op} ({name or 'unnamed'})" for name, op in unknown[:20])
        raise UnsupportedOperatorError(
            f"{where} uses {len(unknown)} node(s) with operators ONNX does not define: {listed}; "
            "replace them or register them as a custom domain", nodes=unknown)
    try:
        if model.ByteSize() < 2_000_000_000:
            onnx.checker.check_model(model)
    except Exception as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise ModelFormatError(
            f"{where} fails the ONNX checker ({first}); it may be truncated or corrupted"
        ) from e


def save_model(model, path: str | Path) -> list[str]:
    """Save ``model``; external data beside it only when it is too big for one protobuf.

    Returns the file names written (the .onnx last), for the caller to commit.
    """
    onnx = _onnx()
    p = Path(path)
    big = sum(t.ByteSize() for t in model.graph.initializer) > EXTERNAL_DATA_THRESHOLD_BYTES
    if big:
        data_name = p.name + ".data"
        onnx.save_model(
            model, str(p), save_as_external_data=True, all_tensors_to_one_file=True,
            location=data_name, size_threshold=1024,
        )
        return [data_name, p.name]
    onnx.save_model(model, str(p))
    return [p.name]


def _dim(d) -> int | str | None:
    if d.HasField("dim_value"):  # old exporters (paddle2onnx) write -1 for "any size"
        return int(d.dim_value) if d.dim_value >= 0 else None
    if d.HasField("dim_param"):
        return d.dim_param
    return None


def numpy_dtype_name(code: int, where: str) -> str:
    """numpy's name for an ONNX TensorProto data type; ModelFormatError naming ``where`` for unknown codes."""
    onnx = _onnx()
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(code)).name
    except (KeyError, TypeError, ValueError) as e:
        raise ModelFormatError(f"{where} has data type {code}, which ONNX does not define; the file is corrupted") from e


def value_specs(values, initializer_names: set[str] | None = None) -> list[TensorSpec]:
    skip = initializer_names or set()
    specs = []
    for v in values:
        if v.name in skip:
            continue
        if v.type.WhichOneof("value") not in (None, "tensor_type"):
            raise UnsupportedOperatorError(f"graph input/output '{v.name}' is a {v.type.WhichOneof('value')}, "
                                           "not a tensor; only tensor inputs and outputs are supported")
        tt = v.type.tensor_type
        dtype = numpy_dtype_name(tt.elem_type, f"input/output '{v.name}'")
        shape = tuple(_dim(d) for d in tt.shape.dim)
        specs.append(TensorSpec(v.name, shape, dtype))
    return specs


def input_specs(model) -> list[TensorSpec]:
    return value_specs(model.graph.input, {t.name for t in model.graph.initializer})


def output_specs(model) -> list[TensorSpec]:
    return value_specs(model.graph.output)


# --- graph passes -----------------------------------------------------------------------------


def gemm_to_matmul(model) -> int:
    """Rewrite Gemm(A, W, b) with a constant W as MatMul(A, W') + b so weight-only quantizers
    (MatMulNBits, dynamic MatMul) reach fully-connected layers. Returns the number rewritten."""
    _onnx()
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    new_nodes, rewritten = [], 0
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        ok = (
            node.op_type == "Gemm"
            and len(node.input) >= 2
            and node.input[1] in inits
            and attrs.get("transA", 0) == 0
            and attrs.get("alpha", 1.0) == 1.0
            and attrs.get("beta", 1.0) == 1.0
        )
        if not ok:
            new_nodes.append(node)
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            w = w.T
        w_name = f"{node.input[1]}_kn"
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w), w_name))
        has_bias = len(node.input) > 2 and node.input[2] != ""
        mm_out = f"{node.output[0]}_matmul" if has_bias else node.output[0]
        new_nodes.append(
            helper.make_node("MatMul", [node.input[0], w_name], [mm_out], name=f"{node.name}_matmul")
        )
        if has_bias:
            new_nodes.append(
                helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]], name=f"{node.name}_bias")
            )
        rewritten += 1
    if rewritten:
        del model.graph.node[:]
        model.graph.node.extend(new_nodes)
        remove_unused_initializers(model)
    return rewritten


def name_nodes(model) -> None:
    """Give every unnamed node a unique name (``<op>_<index>``): reports, layer-wise errors and the float
    nodes of a mixed-precision repair refer to nodes by name, and ORT's tools match nodes by name."""
    taken = {n.name for n in model.graph.node if n.name}
    for i, n in enumerate(model.graph.node):
        if not n.name or n.name in ("",):
            candidate = f"{n.op_type}_{i}"
            while candidate in taken:
                candidate += "_"
            n.name = candidate
            taken.add(candidate)


def topological_sort(model) -> None:
    """Reorder nodes so each comes after its producers (the ONNX checker requires it; ORT's fp16
    converter appends its input casts at the end of the graph)."""
    nodes = list(model.graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    deps = [{producer[x] for x in n.input if x in producer and producer[x] != i} for i, n in enumerate(nodes)]
    users: dict[int, list[int]] = {}
    for i, d in enumerate(deps):
        for j in d:
            users.setdefault(j, []).append(i)
    pending = [len(d) for d in deps]
    ready = deque(i for i, c in enumerate(pending) if c == 0)
    order: list[int] = []
    while ready:
        i = ready.popleft()
        order.append(i)
        for u in users.get(i, []):
            pending[u] -= 1
            if pending[u] == 0:
                ready.append(u)
    if len(order) != len(nodes):
        raise ValueError("graph has a cycle")
    del model.graph.node[:]
    model.graph.node.extend(nodes[i] for i in order)


def remove_unused_initializers(model) -> None:
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    keep = [t for t in model.graph.initializer if t.name in used]
    if len(keep) != len(model.graph.initializer):
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)


def prune_opset_imports(model) -> None:
    """Drop opset imports of domains no node uses (ORT's pre-processing adds a dozen)."""
    used = {n.domain or "" for n in model.graph.node}
    used |= {f.domain for f in model.functions}
    keep = [o for o in model.opset_import if (o.domain or "") in used or o.domain in ("", "ai.onnx")]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def index_input_bounds(model) -> dict[str, int]:
    """For integer graph inputs used as Gather indices into a constant table (token ids into an
    embedding), the table's size: random test data must stay below it."""
    inits = {t.name: t for t in model.graph.initializer}
    int_inputs = {s.name for s in input_specs(model) if "int" in s.dtype}
    bounds: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] in int_inputs \
                and node.input[0] in inits:
            from onnx import helper

            axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 0)
            size = int(inits[node.input[0]].dims[axis])
            bounds[node.input[1]] = min(bounds.get(node.input[1], size), size)
    return bounds


# --- describing weights -----------------------------------------------------------------------

def iter_nodes(graph):
    """Every node of ``graph`` and of the subgraphs its control-flow nodes hold (If branches, Loop and Scan
    bodies), depth first."""
    from onnx import AttributeProto

    stack = list(reversed(graph.node))
    while stack:
        node = stack.pop()
        yield node
        for a in node.attribute:
            if a.type == AttributeProto.GRAPH:
                stack.extend(reversed(a.g.node))
            elif a.type == AttributeProto.GRAPHS:
                for g in reversed(a.graphs):
                    stack.extend(reversed(g.node))


def _subgraphs(graph):
    from onnx import AttributeProto

    yield graph
    for node in iter_nodes(graph):
        for a in node.attribute:
            if a.type == AttributeProto.GRAPH:
                yield a.g
            elif a.type == AttributeProto.GRAPHS:
                yield from a.graphs


def constant_tensors(model) -> dict[str, object]:
    """Initializers and the tensors of ``Constant`` nodes (paddle2onnx and spox store every weight as one),
    in the main graph and its subgraphs, by name."""
    out = {}
    for g in _subgraphs(model.graph):
        out.update({t.name: t for t in g.initializer})
        for n in g.node:
            if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and n.output and n.attribute \
                    and n.attribute[0].name == "value" and n.attribute[0].HasField("t"):
                out[n.output[0]] = n.attribute[0].t
    return out


def describe_weights(model) -> WeightSummary:
    """How a ModelProto's weights are stored (one implementation, ``core.onnx_summary``, shared with
    ``edge inspect`` on devices without the onnx package)."""
    from ..core.onnx_summary import summarize

    return summarize(model.SerializeToString()).weights


def op_histogram(model) -> Counter[str]:
    """Op types of the graph and its subgraphs (If/Loop/Scan bodies), with their domain where not ONNX's."""
    return Counter(
        (f"{n.domain}." if n.domain not in ("", "ai.onnx") else "") + n.op_type for n in iter_nodes(model.graph)
    )


def file_size(path: str | Path) -> int:
    """Bytes on disk of an .onnx file and its external-data sidecars."""
    p = Path(path)
    total = p.stat().st_size
    for extra in p.parent.glob(p.name + ".data"):
        total += os.path.getsize(extra)
    return total
