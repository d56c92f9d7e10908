"""A bounded reader of .tflite flatbuffers: what a runtime checks before LiteRT sees the file.

LiteRT verifies the flatbuffer's layout but not what its indices mean: a subgraph input of -1 makes
it free memory twice (the process aborts), an out-of-range tensor index turns into a ValueError from
deep inside ``get_input_details``. This reader walks the schema's tables with every offset and length
checked against the file (no ``tflite`` or ``flatbuffers`` package: the device install is numpy + one
runtime), and ``check_tflite`` refuses a model whose indices, types or shapes LiteRT cannot hold.

Flatbuffer layout: a table starts with an int32 offset back to its vtable (uint16 vtable size, uint16
table size, then one uint16 field offset per slot, 0 when absent); references (tables, vectors,
strings) are uint32 offsets from where they are stored; a vector is a uint32 length and its elements.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ModelFormatError
from .tensors import max_data_bytes

FILE_IDENTIFIER = b"TFL3"
MAX_TENSOR_BYTES = 1 << 34  # one tensor of 16 GiB: beyond any model an edge device runs (and half this machine's memory)
# schema.fbs TensorType -> bytes per element (0: variable size or sub-byte)
TENSOR_TYPE_BYTES = {0: 4, 1: 2, 2: 4, 3: 1, 4: 8, 5: 0, 6: 1, 7: 2, 8: 8, 9: 1, 10: 8, 11: 16, 12: 8, 13: 0, 14: 0,
                     15: 4, 16: 2, 17: 0, 18: 2}
# table slots (field ids) of schema.fbs
MODEL_VERSION, MODEL_OPERATOR_CODES, MODEL_SUBGRAPHS, MODEL_DESCRIPTION, MODEL_BUFFERS = 0, 1, 2, 3, 4
MODEL_METADATA = 6
METADATA_NAME, METADATA_BUFFER = 0, 1
MAX_METADATA_BYTES = 1 << 16  # entries read into memory; larger ones (a vendor's blob) are skipped
# metadata entry edgelift writes for resizable input dims: {"input": {"axis": step}}; the artifact holds at sizes
# that are multiples of step (converters/tflite/dynamic.py)
DYNAMIC_DIMS_KEY = "edgelift.dynamic_dims"
OPCODE_DEPRECATED_BUILTIN, OPCODE_BUILTIN = 0, 3
SUBGRAPH_TENSORS, SUBGRAPH_INPUTS, SUBGRAPH_OUTPUTS, SUBGRAPH_OPERATORS = 0, 1, 2, 3
TENSOR_SHAPE, TENSOR_TYPE, TENSOR_BUFFER, TENSOR_NAME, TENSOR_QUANTIZATION, TENSOR_SHAPE_SIGNATURE = 0, 1, 2, 3, 4, 7
QUANT_SCALE, QUANT_ZERO_POINT, QUANT_DIMENSION = 2, 3, 6
OPERATOR_OPCODE, OPERATOR_INPUTS, OPERATOR_OUTPUTS = 0, 1, 2
BUFFER_DATA, BUFFER_OFFSET, BUFFER_SIZE = 0, 1, 2


class _Table:
    """One flatbuffer table at ``pos`` of ``buf``, every read bounds-checked."""

    def __init__(self, buf: bytes, pos: int, what: str) -> None:
        self.buf, self.pos, self.what = buf, pos, what
        self._need(pos, 4)
        vt = pos - struct.unpack_from("<i", buf, pos)[0]
        self._need(vt, 4)
        vt_size = struct.unpack_from("<H", buf, vt)[0]
        if vt_size < 4 or vt_size % 2:
            raise ModelFormatError(f"a flatbuffer table ({what}) has a {vt_size}-byte vtable; the file is corrupted")
        self._need(vt, vt_size)
        self.slots = struct.unpack_from(f"<{(vt_size - 4) // 2}H", buf, vt + 4)

    def _need(self, start: int, size: int) -> None:
        if start < 0 or size < 0 or start + size > len(self.buf):
            raise ModelFormatError(f"the flatbuffer's {self.what} points outside the file ({start}+{size} of "
                                   f"{len(self.buf)} bytes); the file is truncated or corrupted")

    def _at(self, slot: int) -> int:
        return self.pos + self.slots[slot] if slot < len(self.slots) and self.slots[slot] else 0

    def scalar(self, slot: int, fmt: str, default: int = 0) -> int:
        at = self._at(slot)
        if not at:
            return default
        self._need(at, struct.calcsize(fmt))
        return struct.unpack_from(fmt, self.buf, at)[0]

    def _ref(self, slot: int) -> int:
        at = self._at(slot)
        if not at:
            return 0
        self._need(at, 4)
        return at + struct.unpack_from("<I", self.buf, at)[0]

    def vector(self, slot: int, elem_size: int) -> tuple[int, int]:
        """(first element's position, length), or (0, 0) when absent."""
        at = self._ref(slot)
        if not at:
            return 0, 0
        self._need(at, 4)
        n = struct.unpack_from("<I", self.buf, at)[0]
        self._need(at + 4, n * elem_size)
        return at + 4, n

    def ints(self, slot: int, fmt: str = "i") -> list[int]:
        start, n = self.vector(slot, struct.calcsize(fmt))
        return list(struct.unpack_from(f"<{n}{fmt}", self.buf, start)) if n else []

    def string(self, slot: int, limit: int = 1 << 12) -> str:
        start, n = self.vector(slot, 1)
        return self.buf[start:start + min(n, limit)].decode("utf-8", errors="replace") if n else ""

    def table(self, slot: int, what: str) -> "_Table | None":
        at = self._ref(slot)
        return _Table(self.buf, at, what) if at else None

    def tables(self, slot: int, what: str) -> list["_Table"]:
        start, n = self.vector(slot, 4)
        return [_Table(self.buf, start + 4 * i + struct.unpack_from("<I", self.buf, start + 4 * i)[0], f"{what} {i}")
                for i in range(n)]


@dataclass
class TFLiteTensor:
    shape: list[int]
    type: int
    buffer: int
    name: str = ""
    shape_signature: list[int] = field(default_factory=list)  # -1 for a dynamic dim; empty when all static
    scales: list[float] = field(default_factory=list)
    zero_points: list[int] = field(default_factory=list)
    quantized_dimension: int = 0


@dataclass
class TFLiteSubgraph:
    tensors: list[TFLiteTensor]
    inputs: list[int]
    outputs: list[int]
    operators: list[tuple[int, list[int], list[int]]]  # (opcode index, inputs, outputs)


@dataclass
class TFLiteModel:
    n_opcodes: int
    subgraphs: list[TFLiteSubgraph] = field(default_factory=list)
    buffers: list[tuple[int, int, int]] = field(default_factory=list)  # (inline data bytes, offset, size)
    opcodes: list[int] = field(default_factory=list)  # BuiltinOperator of each operator code
    version: int = 0
    description: str = ""
    metadata: dict[str, bytes] = field(default_factory=dict)  # small named entries (Model.metadata), inline data


def _tensor(t: _Table) -> TFLiteTensor:
    q = t.table(TENSOR_QUANTIZATION, "quantization")
    scales = [] if q is None else [float(x) for x in q.ints(QUANT_SCALE, "f")]
    zeros = [] if q is None else q.ints(QUANT_ZERO_POINT, "q")
    return TFLiteTensor(t.ints(TENSOR_SHAPE), t.scalar(TENSOR_TYPE, "<b"), t.scalar(TENSOR_BUFFER, "<I"),
                        t.string(TENSOR_NAME), t.ints(TENSOR_SHAPE_SIGNATURE), scales, zeros,
                        0 if q is None else q.scalar(QUANT_DIMENSION, "<i"))


def read_tflite(path: str | Path) -> TFLiteModel:
    """The structure of a .tflite file (indices, shapes, types); ModelFormatError when it does not hold together."""
    p = Path(path)
    buf = p.read_bytes()
    if len(buf) < 8 or buf[4:8] != FILE_IDENTIFIER:
        raise ModelFormatError(f"{p} is not a TFLite flatbuffer (no TFL3 identifier)")
    try:
        root = _Table(buf, struct.unpack_from("<I", buf, 0)[0], "model")
        codes = root.tables(MODEL_OPERATOR_CODES, "operator code")
        model = TFLiteModel(len(codes), version=root.scalar(MODEL_VERSION, "<I"), description=root.string(MODEL_DESCRIPTION))
        model.opcodes = [max(c.scalar(OPCODE_DEPRECATED_BUILTIN, "<b"), c.scalar(OPCODE_BUILTIN, "<i")) for c in codes]
        data_at = []
        for b in root.tables(MODEL_BUFFERS, "buffer"):
            start, n = b.vector(BUFFER_DATA, 1)
            data_at.append(start)
            model.buffers.append((n, b.scalar(BUFFER_OFFSET, "<Q"), b.scalar(BUFFER_SIZE, "<Q")))
        for m in root.tables(MODEL_METADATA, "metadata"):
            index = m.scalar(METADATA_BUFFER, "<I")
            if index < len(model.buffers) and 0 < model.buffers[index][0] <= MAX_METADATA_BYTES:
                model.metadata[m.string(METADATA_NAME)] = buf[data_at[index]:data_at[index] + model.buffers[index][0]]
        for g in root.tables(MODEL_SUBGRAPHS, "subgraph"):
            tensors = [_tensor(t) for t in g.tables(SUBGRAPH_TENSORS, "tensor")]
            ops = [(o.scalar(OPERATOR_OPCODE, "<I"), o.ints(OPERATOR_INPUTS), o.ints(OPERATOR_OUTPUTS))
                   for o in g.tables(SUBGRAPH_OPERATORS, "operator")]
            model.subgraphs.append(TFLiteSubgraph(tensors, g.ints(SUBGRAPH_INPUTS), g.ints(SUBGRAPH_OUTPUTS), ops))
    except ModelFormatError as e:
        raise ModelFormatError(f"{p}: {e}") from None
    except struct.error as e:  # every read is bounds-checked first; this is the last line of defence
        raise ModelFormatError(f"{p} is not a readable TFLite flatbuffer ({e})") from e
    return model


def check_tflite(path: str | Path) -> TFLiteModel:
    """Refuse what LiteRT would crash or fail obscurely on: indices outside their tables, unknown tensor
    types, negative or huge static shapes, buffers outside the file."""
    p = Path(path)
    model = read_tflite(p)
    size = p.stat().st_size
    limit = min(MAX_TENSOR_BYTES, max_data_bytes())
    if not model.subgraphs:
        raise ModelFormatError(f"{p} holds no subgraph; it is not a TFLite model")
    for offset_size in model.buffers:
        _, offset, nbytes = offset_size
        if offset and (offset + nbytes > size):
            raise ModelFormatError(f"{p}: a buffer lies at bytes {offset}..{offset + nbytes}, past the end of the "
                                   f"{size}-byte file; it is truncated")
    for gi, g in enumerate(model.subgraphs):
        n = len(g.tensors)

        def tensor_ref(i: int, where: str, optional: bool = False) -> None:
            if not (0 <= i < n or (optional and i == -1)):
                raise ModelFormatError(f"{p}: subgraph {gi} {where} names tensor {i} of {n}; the file is corrupted")

        for i in g.inputs:
            tensor_ref(i, "input")
        for i in g.outputs:
            tensor_ref(i, "output")
        for k, (opcode, ins, outs) in enumerate(g.operators):
            if opcode >= model.n_opcodes:
                raise ModelFormatError(f"{p}: operator {k} uses opcode {opcode} of {model.n_opcodes}; the file is corrupted")
            for i in ins:
                tensor_ref(i, f"operator {k} input", optional=True)
            for i in outs:
                tensor_ref(i, f"operator {k} output")
        for ti, t in enumerate(g.tensors):
            if t.type not in TENSOR_TYPE_BYTES:
                raise ModelFormatError(f"{p}: tensor {ti} has type {t.type}, which TFLite does not define")
            if t.buffer >= len(model.buffers):
                raise ModelFormatError(f"{p}: tensor {ti} uses buffer {t.buffer} of {len(model.buffers)}; the file is corrupted")
            count = 1
            for d in t.shape:
                if d < 0:
                    raise ModelFormatError(f"{p}: tensor {ti} has shape {t.shape}; a static dim cannot be negative")
                count *= d
            if count * max(TENSOR_TYPE_BYTES[t.type], 1) > limit:
                raise ModelFormatError(f"{p}: tensor {ti} of shape {t.shape} would need more than {limit:,} bytes "
                                       "(half this machine's memory); the file is corrupted")
    return model


def dynamic_dim_steps(model: TFLiteModel) -> dict[str, dict[int, int]]:
    """The resizable input dims an edgelift artifact records: input name -> {axis: size step}; empty when none
    (or when the entry does not parse: the file is then treated as any other .tflite)."""
    raw = model.metadata.get(DYNAMIC_DIMS_KEY)
    if not raw:
        return {}
    try:
        listed = json.loads(raw)
        return {str(n): {int(a): int(s) for a, s in axes.items() if int(s) > 0} for n, axes in listed.items()}
    except (ValueError, TypeError, AttributeError):
        return {}
