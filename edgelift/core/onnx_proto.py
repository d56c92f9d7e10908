"""Just enough of ONNX's protobuf to plan and split graphs on a device, without the ``onnx`` package.

The device install is numpy + onnxruntime; the ``onnx`` package (protobuf bindings, shape inference)
stays on the workstation. Patch-based inference needs to read a graph (nodes, attributes,
initializer shapes) and write sub-graphs for ONNX Runtime, so this module decodes the protobuf wire
format directly: messages are kept as raw field lists, only the fields we touch are decoded, and
everything else (initializer data, opset imports, metadata) is copied through byte for byte.

Every length is checked against the bytes left, and nesting is bounded, so a hostile file gives a
ModelFormatError rather than a crash or an unbounded allocation.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ..errors import ModelFormatError

# ONNX field numbers (onnx.proto3)
MODEL_GRAPH, MODEL_OPSET = 7, 8
GRAPH_NODE, GRAPH_NAME, GRAPH_INIT, GRAPH_INPUT, GRAPH_OUTPUT, GRAPH_VALUE_INFO = 1, 2, 5, 11, 12, 13
NODE_INPUT, NODE_OUTPUT, NODE_NAME, NODE_OP, NODE_ATTR, NODE_DOMAIN = 1, 2, 3, 4, 5, 7
ATTR_NAME, ATTR_F, ATTR_I, ATTR_S, ATTR_FLOATS, ATTR_INTS, ATTR_TYPE = 1, 2, 3, 4, 7, 8, 20
ATTR_TYPE_INTS = 7
TENSOR_DIMS, TENSOR_TYPE, TENSOR_NAME, TENSOR_RAW, TENSOR_INT64S, TENSOR_INT32S, TENSOR_FLOATS = 1, 2, 8, 9, 7, 5, 4
TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION, LOCATION_EXTERNAL = 13, 14, 1
# TensorProto.DataType -> numpy dtype name
ELEM_TYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 9: "bool",
              10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 16: "bfloat16"}
ELEM_CODES = {v: k for k, v in ELEM_TYPES.items()}

Field = tuple[int, int, object]  # (field number, wire type, int | bytes)


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ModelFormatError("ONNX protobuf ends inside a varint; the file is truncated")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ModelFormatError("ONNX protobuf has a malformed varint")


def parse(buf: bytes) -> list[Field]:
    """The fields of one protobuf message (length-delimited values stay bytes)."""
    out: list[Field] = []
    pos, n = 0, len(buf)
    while pos < n:
        key, pos = _varint(buf, pos)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, pos = _varint(buf, pos)
        elif wt == 2:
            size, pos = _varint(buf, pos)
            if size > n - pos:
                raise ModelFormatError("ONNX protobuf field runs past the end of the file; the file is truncated")
            v, pos = buf[pos:pos + size], pos + size
        elif wt == 1:
            if pos + 8 > n:
                raise ModelFormatError("ONNX protobuf ends inside a 64-bit field")
            v, pos = buf[pos:pos + 8], pos + 8
        elif wt == 5:
            if pos + 4 > n:
                raise ModelFormatError("ONNX protobuf ends inside a 32-bit field")
            v, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ModelFormatError(f"ONNX protobuf uses wire type {wt}; the file is not ONNX")
        if num == 0:
            raise ModelFormatError("ONNX protobuf has field number 0; the file is not ONNX")
        out.append((num, wt, v))
    return out


def _enc_varint(v: int) -> bytes:
    if v < 0:
        v += 1 << 64
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def encode(fields: list[Field]) -> bytes:
    out = bytearray()
    for num, wt, v in fields:
        out += _enc_varint(num << 3 | wt)
        if wt == 0:
            out += _enc_varint(int(v))
        elif wt == 2:
            out += _enc_varint(len(v)) + v
        else:
            out += v
    return bytes(out)


def _str(fields: list[Field], num: int, default: str = "") -> str:
    for n, wt, v in fields:
        if n == num and wt == 2:
            return v.decode("utf-8", errors="replace")
    return default


def _strs(fields: list[Field], num: int) -> list[str]:
    return [v.decode("utf-8", errors="replace") for n, wt, v in fields if n == num and wt == 2]


def _ints(fields: list[Field], num: int) -> list[int]:
    out = []
    for n, wt, v in fields:
        if n != num:
            continue
        if wt == 0:
            out.append(_signed(v))
        elif wt == 2:  # packed
            pos = 0
            while pos < len(v):
                x, pos = _varint(v, pos)
                out.append(_signed(x))
    return out


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


@dataclass
class Attribute:
    name: str
    value: object  # int, float, bytes, list[int], list[float]; None when kept only raw (tensor/graph attrs)
    raw: bytes


@dataclass
class Node:
    op_type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    domain: str
    attrs: dict[str, Attribute]

    def attr(self, name: str, default=None):
        a = self.attrs.get(name)
        return default if a is None or a.value is None else a.value

    def with_ints(self, name: str, values: list[int]) -> "Node":
        """A copy with INTS attribute ``name`` set (e.g. a convolution's pads for one patch)."""
        raw = encode([(ATTR_NAME, 2, name.encode()), (ATTR_INTS, 2, b"".join(_enc_varint(v) for v in values)),
                      (ATTR_TYPE, 0, ATTR_TYPE_INTS)])
        attrs = dict(self.attrs)
        attrs[name] = Attribute(name, list(values), raw)
        return Node(self.op_type, self.name, list(self.inputs), list(self.outputs), self.domain, attrs)

    def encode(self) -> bytes:
        f: list[Field] = [(NODE_INPUT, 2, i.encode()) for i in self.inputs]
        f += [(NODE_OUTPUT, 2, o.encode()) for o in self.outputs]
        if self.name:
            f.append((NODE_NAME, 2, self.name.encode()))
        f.append((NODE_OP, 2, self.op_type.encode()))
        f += [(NODE_ATTR, 2, a.raw) for a in self.attrs.values()]
        if self.domain:
            f.append((NODE_DOMAIN, 2, self.domain.encode()))
        return encode(f)


def int_attribute(name: str, value: int) -> Attribute:
    """An INT attribute (e.g. Concat's axis, MatMulNBits' K/N/bits)."""
    return Attribute(name, value, encode([(ATTR_NAME, 2, name.encode()), (ATTR_I, 0, value), (ATTR_TYPE, 0, 2)]))


def _attribute(raw: bytes) -> Attribute:
    f = parse(raw)
    name = _str(f, ATTR_NAME)
    kind = next((v for n, wt, v in f if n == ATTR_TYPE and wt == 0), 0)
    value: object = None
    if kind == 1:  # FLOAT
        value = next((struct.unpack("<f", v)[0] for n, wt, v in f if n == ATTR_F and wt == 5), 0.0)
    elif kind == 2:  # INT
        value = next((_signed(v) for n, wt, v in f if n == ATTR_I and wt == 0), 0)
    elif kind == 3:  # STRING
        value = next((v for n, wt, v in f if n == ATTR_S and wt == 2), b"")
    elif kind == 6:  # FLOATS
        vals = []
        for n, wt, v in f:
            if n == ATTR_FLOATS:
                vals += list(struct.unpack(f"<{len(v) // 4}f", v)) if wt == 2 else [struct.unpack("<f", v)[0]]
        value = vals
    elif kind == ATTR_TYPE_INTS:
        value = _ints(f, ATTR_INTS)
    return Attribute(name, value, raw)


def _node(raw: bytes) -> Node:
    f = parse(raw)
    attrs = {}
    for n, wt, v in f:
        if n == NODE_ATTR and wt == 2:
            a = _attribute(v)
            attrs[a.name] = a
    return Node(_str(f, NODE_OP), _str(f, NODE_NAME), _strs(f, NODE_INPUT), _strs(f, NODE_OUTPUT),
                _str(f, NODE_DOMAIN), attrs)


@dataclass
class Initializer:
    name: str
    dims: tuple[int, ...]
    dtype: str
    raw: bytes

    def value(self):
        """The tensor as numpy (small tensors: shapes for Reshape, pads, axes)."""
        import numpy as np

        f = parse(self.raw)
        dt = np.dtype(self.dtype if self.dtype != "bfloat16" else "uint16")
        data = next((v for n, wt, v in f if n == TENSOR_RAW and wt == 2), None)
        if data is not None:
            return np.frombuffer(data, dt).reshape(self.dims)
        if self.dtype == "int64":
            return np.array(_ints(f, TENSOR_INT64S), np.int64).reshape(self.dims)
        if self.dtype == "int32":
            return np.array(_ints(f, TENSOR_INT32S), np.int32).reshape(self.dims)
        floats = b"".join(v for n, wt, v in f if n == TENSOR_FLOATS)
        return np.frombuffer(floats, np.float32).reshape(self.dims)


    @property
    def is_external(self) -> bool:
        return any(n == TENSOR_DATA_LOCATION and wt == 0 and v == LOCATION_EXTERNAL for n, wt, v in parse(self.raw))

    def inlined(self, folder) -> "Initializer":
        """This initializer with its external data read into it (``raw_data``), after checking where it points:
        a relative path inside ``folder`` (the model's), a regular file, and offset + length within it."""
        import os
        from pathlib import Path

        from ..errors import shown

        fields = parse(self.raw)
        ext = {_str(parse(v), 1): _str(parse(v), 2) for n, wt, v in fields if n == TENSOR_EXTERNAL_DATA and wt == 2}
        where = f"initializer '{shown(self.name)}'"
        location = ext.get("location", "")
        folder = Path(folder).resolve()
        if not location or "\0" in location or os.path.isabs(location):
            raise ModelFormatError(f"{where} keeps its data at '{shown(location)}': external data must be a relative "
                                   "path beside the model")
        try:
            target = (folder / location).resolve()
            if folder not in target.parents or not target.is_file():
                raise ModelFormatError(f"{where} keeps its data at '{shown(location)}', which is not a file inside "
                                       f"the model's folder {folder}; copy the data file beside the model")
            size = target.stat().st_size
            offset, length = int(ext.get("offset") or 0), int(ext["length"]) if ext.get("length") else None
        except (OSError, ValueError) as e:
            raise ModelFormatError(f"{where}: its external data reference is invalid ({shown(e, 120)})") from e
        length = size - offset if length is None else length
        if offset < 0 or length < 0 or offset + length > size:
            raise ModelFormatError(f"{where} needs bytes {offset}..{offset + length} of {target.name}, which has {size}: "
                                   "the data file is truncated or belongs to another model")
        with open(target, "rb") as f:
            f.seek(offset)
            data = f.read(length)
        kept = [(n, wt, v) for n, wt, v in fields if n not in (TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION, TENSOR_RAW)]
        return Initializer(self.name, self.dims, self.dtype, encode(kept + [(TENSOR_RAW, 2, data)]))


def int64_initializer(name: str, values: list[int]) -> Initializer:
    raw = encode([(TENSOR_DIMS, 0, len(values)), (TENSOR_TYPE, 0, ELEM_CODES["int64"]), (TENSOR_NAME, 2, name.encode()),
                  (TENSOR_RAW, 2, struct.pack(f"<{len(values)}q", *values))])
    return Initializer(name, (len(values),), "int64", raw)


def _initializer(raw: bytes) -> Initializer:
    f = parse(raw)
    code = next((v for n, wt, v in f if n == TENSOR_TYPE and wt == 0), 1)
    return Initializer(_str(f, TENSOR_NAME), tuple(_ints(f, TENSOR_DIMS)), ELEM_TYPES.get(code, "float32"), raw)


@dataclass
class ValueInfo:
    name: str
    dtype: str
    shape: tuple  # ints, or str/None for symbolic dims

    def encode(self) -> bytes:
        dims = []
        for d in self.shape:
            dims.append((1, 2, encode([(1, 0, d)] if isinstance(d, int) else [(2, 2, str(d or "d").encode())])))
        tensor = encode([(1, 0, ELEM_CODES[self.dtype]), (2, 2, encode(dims))])
        return encode([(1, 2, self.name.encode()), (2, 2, encode([(1, 2, tensor)]))])


def _value_info(raw: bytes) -> ValueInfo:
    f = parse(raw)
    name = _str(f, 1)
    dtype, shape = "float32", ()
    for n, wt, tp in f:
        if n != 2 or wt != 2:
            continue
        for n2, wt2, tt in parse(tp):
            if n2 != 1 or wt2 != 2:
                continue
            tf = parse(tt)
            dtype = ELEM_TYPES.get(next((v for k, w, v in tf if k == 1 and w == 0), 1), "float32")
            dims = []
            for k, w, sh in tf:
                if k == 2 and w == 2:
                    for k2, w2, dim in parse(sh):
                        if k2 == 1 and w2 == 2:
                            df = parse(dim)
                            dims.append(next((v for a, b, v in df if a == 1 and b == 0), None)
                                        or _str(df, 2) or None)
            shape = tuple(dims)
    return ValueInfo(name, dtype, shape)


@dataclass
class OnnxGraph:
    """The parts of a ModelProto a memory planner needs, plus what it takes to write sub-models."""

    nodes: list[Node]
    initializers: dict[str, Initializer]
    inputs: list[ValueInfo]
    outputs: list[ValueInfo]
    model_fields: list[Field] = field(default_factory=list)  # everything but the graph, verbatim

    def submodel(self, nodes: list[Node], inputs: list[ValueInfo], outputs: list[ValueInfo], name: str = "sub",
                 extra: list["Initializer"] = ()) -> bytes:
        """A ModelProto computing ``outputs`` from ``inputs`` with ``nodes`` (initializers they read kept,
        ``extra`` ones added)."""
        used = {i for n in nodes for i in n.inputs}
        g: list[Field] = [(GRAPH_NODE, 2, n.encode()) for n in nodes]
        g.append((GRAPH_NAME, 2, name.encode()))
        g += [(GRAPH_INIT, 2, t.raw) for k, t in self.initializers.items() if k in used]
        g += [(GRAPH_INIT, 2, t.raw) for t in extra]
        g += [(GRAPH_INPUT, 2, v.encode()) for v in inputs]
        g += [(GRAPH_OUTPUT, 2, v.encode()) for v in outputs]
        return encode([f for f in self.model_fields if f[0] != MODEL_GRAPH] + [(MODEL_GRAPH, 2, encode(g))])


def read_onnx_graph(data: bytes, folder=None) -> OnnxGraph:
    """The graph of an ONNX model. Weights kept in external data files are read in from ``folder`` (the
    model's own), checked first; without a folder such a model is refused, never resolved against the
    working directory."""
    model = parse(data)
    graphs = [v for n, wt, v in model if n == MODEL_GRAPH and wt == 2]
    if len(graphs) != 1:
        raise ModelFormatError("the file has no ONNX graph; it is not an ONNX model")
    g = parse(graphs[0])
    inits = {}
    for n, wt, v in g:
        if n == GRAPH_INIT and wt == 2:
            t = _initializer(v)
            inits[t.name] = t
    external = [t for t in inits.values() if t.is_external]
    if external and folder is None:
        raise ModelFormatError("the model keeps weights in external data files: load it from its path, beside them")
    for t in external:
        inits[t.name] = t.inlined(folder)
    nodes = [_node(v) for n, wt, v in g if n == GRAPH_NODE and wt == 2]
    inputs = [vi for vi in (_value_info(v) for n, wt, v in g if n == GRAPH_INPUT and wt == 2) if vi.name not in inits]
    outputs = [_value_info(v) for n, wt, v in g if n == GRAPH_OUTPUT and wt == 2]
    return OnnxGraph(nodes, inits, inputs, outputs, [f for f in model if f[0] != MODEL_GRAPH])


def graph_input_names(data: bytes) -> list[str]:
    """The names of a model's declared graph inputs; nothing else is decoded (weights stay where they are)."""
    graphs = [v for n, wt, v in parse(data) if n == MODEL_GRAPH and wt == 2]
    if len(graphs) != 1:
        raise ModelFormatError("the file has no ONNX graph; it is not an ONNX model")
    return [_str(parse(v), 1) for n, wt, v in parse(graphs[0]) if n == GRAPH_INPUT and wt == 2]


def tensor_initializer(name: str, array) -> Initializer:
    """An initializer holding ``array`` (numpy) as raw little-endian data."""
    import numpy as np

    a = np.ascontiguousarray(array)
    dtype = str(a.dtype)
    fields: list[Field] = [(TENSOR_DIMS, 0, int(d)) for d in a.shape]
    fields += [(TENSOR_TYPE, 0, ELEM_CODES[dtype]), (TENSOR_NAME, 2, name.encode()), (TENSOR_RAW, 2, a.tobytes())]
    return Initializer(name, tuple(a.shape), dtype, encode(fields))


def model_bytes(nodes: list[Node], inputs: list[ValueInfo], outputs: list[ValueInfo], initializers: list[Initializer],
                opsets: dict[str, int], ir_version: int = 10, name: str = "g") -> bytes:
    """A complete ModelProto, written without the onnx package (device side)."""
    g: list[Field] = [(GRAPH_NODE, 2, n.encode()) for n in nodes]
    g.append((GRAPH_NAME, 2, name.encode()))
    g += [(GRAPH_INIT, 2, t.raw) for t in initializers]
    g += [(GRAPH_INPUT, 2, v.encode()) for v in inputs]
    g += [(GRAPH_OUTPUT, 2, v.encode()) for v in outputs]
    ops = [(MODEL_OPSET, 2, encode([(1, 2, d.encode()), (2, 0, v)])) for d, v in opsets.items()]
    return encode([(1, 0, ir_version), *ops, (MODEL_GRAPH, 2, encode(g))])
