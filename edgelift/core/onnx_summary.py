"""What an ONNX file holds — signature, ops, weights and how they are quantized — read with the project's
own protobuf codec (``onnx_proto``), so ``edge inspect`` works on a device's base install (no ``onnx``).

The one implementation of the weight summary: the converters call it on their in-memory models too.
Subgraphs (If/Loop/Scan bodies) are walked, and ``Constant`` nodes count as weights (paddle2onnx and spox
store every weight as one). Nothing is sized by a header: element counts are Python ints, and external
data is never read (its declared length is the size).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..errors import ModelFormatError, shown
from . import onnx_proto as pb
from .tensors import TensorSpec

# AttributeProto / TensorProto field numbers (onnx.proto3)
_A_NAME, _A_I, _A_T, _A_G, _A_GRAPHS, _A_TYPE = 1, 3, 5, 6, 11, 20
_A_TENSOR, _A_GRAPH, _A_GRAPHS_TYPE = 4, 5, 10
_T_DIMS, _T_TYPE, _T_INT32, _T_NAME, _T_RAW, _T_EXTERNAL = 1, 2, 5, 8, 9, 13
_G_NODE, _G_INIT = 1, 5
_N_INPUT, _N_OUTPUT, _N_OP, _N_ATTR, _N_DOMAIN = 1, 2, 4, 5, 7
_M_IR, _M_PRODUCER, _M_PRODUCER_VERSION, _M_OPSET, _M_GRAPH = 1, 2, 3, 8, 7

# ONNX data types beyond onnx_proto's table (4-bit and 8-bit floats appear in quantized graphs)
_EXTRA_TYPES = {17: "float8e4m3fn", 18: "float8e4m3fnuz", 19: "float8e5m2", 20: "float8e5m2fnuz", 21: "uint4",
                22: "int4", 14: "complex64", 15: "complex128", 8: "str"}
_BITS = {"uint4": 4, "int4": 4, "bool": 8, "str": 8}

# Inputs that are quantization parameters, not weights: (op_type, input index).
QPARAM_INPUTS = {
    ("DequantizeLinear", 1), ("DequantizeLinear", 2),
    ("QuantizeLinear", 1), ("QuantizeLinear", 2),
    ("MatMulNBits", 2), ("MatMulNBits", 3), ("MatMulNBits", 4), ("MatMulNBits", 5),
    ("DynamicQuantizeLinear", 1),
    ("MatMulInteger", 2), ("MatMulInteger", 3),
    ("DynamicQuantizeMatMul", 2), ("DynamicQuantizeMatMul", 3),
}


@dataclass
class DtypeStats:
    tensors: int = 0
    elements: int = 0
    bytes: int = 0


@dataclass
class WeightSummary:
    """What a graph's weights are stored as. ``parameters`` counts logical weight elements, so an
    fp32 model and its int8/int4 artifacts report the same number."""

    parameters: int = 0
    by_dtype: dict[str, DtypeStats] = field(default_factory=dict)
    quantized: list[str] = field(default_factory=list)


@dataclass
class _Tensor:
    name: str
    dims: tuple[int, ...]
    code: int
    fields: list

    @property
    def dtype(self) -> str:
        name = pb.ELEM_TYPES.get(self.code) or _EXTRA_TYPES.get(self.code)
        if name is None:
            raise ModelFormatError(f"tensor '{shown(self.name)}' has data type {self.code}, which ONNX does not "
                                   "define; the file is corrupted")
        return name

    @property
    def elements(self) -> int:
        n = 1
        for d in self.dims:  # Python ints: no overflow from hostile dims
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        raw = next((v for n, wt, v in self.fields if n == _T_RAW and wt == 2), None)
        if raw is not None:
            return len(raw)
        for n, wt, v in self.fields:
            if n == _T_EXTERNAL and wt == 2:
                kv = pb.parse(v)
                if pb._str(kv, 1) == "length":
                    try:
                        return int(pb._str(kv, 2))
                    except ValueError:
                        raise ModelFormatError(f"tensor '{shown(self.name)}' declares an external length that is not "
                                               "a number; the file is corrupted") from None
        return sum(len(v) if isinstance(v, bytes) else 8 for n, wt, v in self.fields if n not in (_T_DIMS, _T_TYPE, _T_NAME))

    def any_nonzero(self) -> bool:
        raw = next((v for n, wt, v in self.fields if n == _T_RAW and wt == 2), None)
        if raw is not None:
            return any(raw)
        return any(pb._ints(self.fields, _T_INT32)) or any(
            any(v) if isinstance(v, bytes) else v for n, wt, v in self.fields if n not in (_T_DIMS, _T_TYPE, _T_NAME))


def _tensor(raw: bytes) -> _Tensor:
    f = pb.parse(raw)
    code = next((v for n, wt, v in f if n == _T_TYPE and wt == 0), 0)
    return _Tensor(pb._str(f, _T_NAME), tuple(pb._ints(f, _T_DIMS)), code, f)


@dataclass
class _Node:
    op_type: str
    domain: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, list]  # name -> the attribute's parsed fields


def _walk(g: list, nodes: list[_Node], tensors: dict[str, _Tensor], depth: int = 0) -> None:
    """Nodes and constant tensors of a graph (its parsed fields) and, depth first, of the graphs its nodes hold."""
    if depth > 64:
        raise ModelFormatError("subgraphs nest more than 64 deep; the file is corrupted or hostile")
    for n, wt, v in g:
        if n == _G_INIT and wt == 2:
            t = _tensor(v)
            tensors[t.name] = t
    for n, wt, v in g:
        if n != _G_NODE or wt != 2:
            continue
        f = pb.parse(v)
        attrs = {}
        for k, w, a in f:
            if k == _N_ATTR and w == 2:
                af = pb.parse(a)
                attrs[pb._str(af, _A_NAME)] = af
        node = _Node(pb._str(f, _N_OP), pb._str(f, _N_DOMAIN), pb._strs(f, _N_INPUT), pb._strs(f, _N_OUTPUT), attrs)
        nodes.append(node)
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.outputs and "value" in attrs:
            t = next((x for k, w, x in attrs["value"] if k == _A_T and w == 2), None)
            if t is not None:
                tensors[node.outputs[0]] = _tensor(t)
        for af in attrs.values():
            for k, w, sub in af:
                if k in (_A_G, _A_GRAPHS) and w == 2:
                    _walk(pb.parse(sub), nodes, tensors, depth + 1)


def _int_attr(node: _Node, name: str):
    af = node.attrs.get(name)
    if af is None:
        return None
    return next((pb._signed(v) for k, w, v in af if k == _A_I and w == 0), None)


@dataclass
class OnnxSummary:
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    op_histogram: Counter
    weights: WeightSummary
    metadata: dict[str, str]


def summarize_weights(nodes: list[_Node], tensors: dict[str, _Tensor]) -> WeightSummary:
    consumers: dict[str, list[tuple[_Node, int]]] = {}
    for node in nodes:
        for i, name in enumerate(node.inputs):
            if name in tensors:
                consumers.setdefault(name, []).append((node, i))
    s = WeightSummary()
    schemes: Counter[str] = Counter()
    for name, t in tensors.items():
        uses = consumers.get(name, [])
        if not uses or all((n.op_type, i) in QPARAM_INPUTS for n, i in uses):
            continue  # scales, zero points, or dead
        if len(t.dims) == 0:
            continue  # scalars: constants of the code (1/sqrt(d), eps) or per-tensor scales
        dname, n_el = t.dtype, t.elements
        if dname in ("int64", "int32") and not any(n.op_type == "DequantizeLinear" and i == 0 for n, i in uses):
            continue  # shape/index constants are not parameters unless they are a dequantized bias
        node, idx = uses[0]
        if node.op_type == "MatMulNBits" and idx == 1:
            k, n, block, bits = (_int_attr(node, a) for a in ("K", "N", "block_size", "bits"))
            missing = [a for a, v in (("K", k), ("N", n), ("block_size", block)) if v is None]
            if missing:
                raise ModelFormatError(f"a MatMulNBits node lacks integer attribute(s) {missing}; the file is corrupted")
            bits = bits or 4
            n_el, dname = k * n, f"int{bits}"
            sym = "with zero points" if len(node.inputs) > 3 and node.inputs[3] else "symmetric"
            schemes[f"int{bits} block-wise {block} {sym} (MatMulNBits)"] += 1
        elif node.op_type == "DequantizeLinear" and idx == 0 and dname in ("int8", "uint8", "int4", "uint4"):
            scale = tensors.get(node.inputs[1]) if len(node.inputs) > 1 else None
            axis = _int_attr(node, "axis")
            gran = (f"per-channel (axis {1 if axis is None else axis})" if scale is not None and scale.elements > 1
                    else "per-tensor")
            zp = tensors.get(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
            schemes[f"{dname} {gran} {'asymmetric' if zp is not None and zp.any_nonzero() else 'symmetric'} (QDQ)"] += 1
        elif node.op_type == "DequantizeLinear" and dname == "int32":
            schemes["int32 bias (QDQ)"] += 1
        elif node.op_type in ("MatMulInteger", "DynamicQuantizeMatMul", "ConvInteger"):
            schemes[f"{dname} per-tensor (dynamic {node.op_type})"] += 1
        st = s.by_dtype.setdefault(dname, DtypeStats())
        st.tensors, st.elements, st.bytes = st.tensors + 1, st.elements + n_el, st.bytes + t.nbytes
        s.parameters += n_el
    s.quantized = [f"{count} × {scheme}" for scheme, count in sorted(schemes.items())]
    return s


def _specs(values: list[pb.ValueInfo]) -> list[TensorSpec]:
    return [TensorSpec(v.name, tuple(d if isinstance(d, int) else (d or None) for d in v.shape), v.dtype)
            for v in values]


def summarize(data: bytes) -> OnnxSummary:
    """The summary of a serialized ModelProto (external data is not read)."""
    model = pb.parse(data)
    graphs = [v for n, wt, v in model if n == _M_GRAPH and wt == 2]
    if len(graphs) != 1:
        raise ModelFormatError("the file has no ONNX graph; it is not an ONNX model")
    nodes: list[_Node] = []
    tensors: dict[str, _Tensor] = {}
    g = pb.parse(graphs[0])  # parsed once: the walk and the signature below read the same fields
    _walk(g, nodes, tensors)
    inits = {pb._str(pb.parse(v), _T_NAME) for n, wt, v in g if n == _G_INIT and wt == 2}
    inputs = [vi for vi in (pb._value_info(v) for n, wt, v in g if n == 11 and wt == 2) if vi.name not in inits]
    outputs = [pb._value_info(v) for n, wt, v in g if n == 12 and wt == 2]
    opsets = []
    for n, wt, v in model:
        if n == _M_OPSET and wt == 2:
            f = pb.parse(v)
            opsets.append(f"{pb._str(f, 1) or 'ai.onnx'} {next((x for k, w, x in f if k == 2 and w == 0), 0)}")
    meta = {"ir_version": str(next((v for n, wt, v in model if n == _M_IR and wt == 0), 0)),
            "opsets": ", ".join(opsets),
            "producer": f"{pb._str(model, _M_PRODUCER)} {pb._str(model, _M_PRODUCER_VERSION)}".strip()}
    hist = Counter((f"{n.domain}." if n.domain not in ("", "ai.onnx") else "") + n.op_type for n in nodes)
    return OnnxSummary(_specs(inputs), _specs(outputs), hist, summarize_weights(nodes, tensors), meta)

