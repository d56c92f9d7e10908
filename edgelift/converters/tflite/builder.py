"""Build TFLite flatbuffers with the ``tflite`` package's generated builder functions.

``TFLiteBuilder`` collects tensors, constant buffers and operators, then serializes a model with
one subgraph. Tensor types, op codes and option tables come from the schema (``tflite`` enums),
not from numbers written here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...errors import require

BUFFER_ALIGNMENT = 16  # constant data aligned as TFLite's own converter does

_NP_TO_TFL = {
    "float32": "FLOAT32", "float16": "FLOAT16", "int32": "INT32", "uint8": "UINT8",
    "int64": "INT64", "int8": "INT8", "int16": "INT16", "bool": "BOOL", "int4": "INT4",
}


@dataclass
class _Tensor:
    name: str
    shape: tuple[int, ...]  # -1 marks a dynamic dimension
    dtype: str
    buffer: int
    scales: tuple[float, ...] | None = None
    zero_points: tuple[int, ...] | None = None
    quantized_dimension: int = 0
    signature: tuple[int, ...] | None = None  # shape_signature (-1 where a dim is resizable) beside a built shape


# Builtins whose kernels are registered from a version above 1 (LiteRT refuses version 1).
MIN_OP_VERSION = {"BROADCAST_TO": 2}


@dataclass
class _Op:
    code: int
    version: int
    inputs: list[int]
    outputs: list[int]
    options_name: str | None
    options: dict = field(default_factory=dict)


class TFLiteBuilder:
    def __init__(self, description: str = "edgelift") -> None:
        self.tfl = require("tflite", "tflite", "Writing TFLite models")
        self.description = description
        self.tensors: list[_Tensor] = []
        self.buffers: list[bytes] = [b""]  # buffer 0 is the empty sentinel
        self.ops: list[_Op] = []
        self.inputs: list[int] = []
        self.outputs: list[int] = []
        self.metadata: dict[str, bytes] = {}  # Model.metadata entries (name -> bytes in a buffer of their own)

    def tensor(self, name: str, shape, dtype: str = "float32", *, scales=None, zero_points=None,
               quantized_dimension: int = 0) -> int:
        """An activation tensor (no data); -1 in ``shape`` is a dynamic dimension."""
        self.tensors.append(_Tensor(name, tuple(int(d) for d in shape), np.dtype(dtype).name, 0,
                                    None if scales is None else tuple(float(s) for s in np.atleast_1d(scales)),
                                    None if zero_points is None else tuple(int(z) for z in np.atleast_1d(zero_points)),
                                    quantized_dimension))
        return len(self.tensors) - 1

    def like(self, name: str, shape, src: int) -> int:
        """A new activation tensor with ``src``'s dtype and quantization (layout views, reshapes)."""
        t = self.tensors[src]
        return self.tensor(name, shape, t.dtype, scales=t.scales, zero_points=t.zero_points,
                           quantized_dimension=t.quantized_dimension)

    def constant(self, name: str, value: np.ndarray, **quant) -> int:
        value = np.ascontiguousarray(value)
        self.buffers.append(value.tobytes())
        idx = self.tensor(name, value.shape, value.dtype.name, **quant)
        self.tensors[idx].buffer = len(self.buffers) - 1
        return idx

    def constant_int4(self, name: str, q: np.ndarray, *, scales, quantized_dimension: int = 0) -> int:
        """Signed int4 values (in an int8 array, -8..7), packed two per byte, low nibble first."""
        flat = q.astype(np.int8).ravel()
        if flat.size % 2:
            flat = np.concatenate([flat, np.zeros(1, np.int8)])
        packed = ((flat[0::2] & 0x0F) | ((flat[1::2] & 0x0F) << 4)).astype(np.uint8)
        self.buffers.append(packed.tobytes())
        idx = self.tensor(name, q.shape, "int8", scales=scales, zero_points=np.zeros(len(np.atleast_1d(scales)), np.int64),
                          quantized_dimension=quantized_dimension)
        self.tensors[idx].dtype = "int4"
        self.tensors[idx].buffer = len(self.buffers) - 1
        return idx

    def op(self, name: str, inputs: list[int], outputs: list[int], options: str | None = None, **fields) -> None:
        """Add builtin operator ``name`` (e.g. "CONV_2D") with option table ``options`` (e.g.
        "Conv2DOptions") whose fields are given in the schema's CamelCase (``StrideW=1``)."""
        code = getattr(self.tfl.BuiltinOperator, name)
        self.ops.append(_Op(code, MIN_OP_VERSION.get(name, 1), list(inputs), list(outputs), options, fields))

    # --- serialization -----------------------------------------------------------------------

    def finish(self) -> bytes:
        import flatbuffers

        tfl, b = self.tfl, flatbuffers.Builder(1024)
        codes = sorted({(op.code, op.version) for op in self.ops})
        code_index = {c: i for i, c in enumerate(codes)}

        meta_buffers = {name: len(self.buffers) + i for i, name in enumerate(self.metadata)}
        buffers = [self._buffer(b, data) for data in [*self.buffers, *self.metadata.values()]]
        metadata = []
        for name, index in meta_buffers.items():
            meta_name = b.CreateString(name)
            tfl.MetadataStart(b)
            tfl.MetadataAddName(b, meta_name)
            tfl.MetadataAddBuffer(b, index)
            metadata.append(tfl.MetadataEnd(b))
        tensors = [self._tensor(b, t) for t in self.tensors]
        operators = [self._operator(b, op, code_index[(op.code, op.version)]) for op in self.ops]
        opcodes = []
        for c, version in codes:
            tfl.OperatorCodeStart(b)
            tfl.OperatorCodeAddDeprecatedBuiltinCode(b, min(c, 127))
            tfl.OperatorCodeAddBuiltinCode(b, c)
            tfl.OperatorCodeAddVersion(b, version)
            opcodes.append(tfl.OperatorCodeEnd(b))

        tensors_v = self._offsets(b, tfl.SubGraphStartTensorsVector, tensors)
        inputs_v = self._ints(b, tfl.SubGraphStartInputsVector, self.inputs)
        outputs_v = self._ints(b, tfl.SubGraphStartOutputsVector, self.outputs)
        ops_v = self._offsets(b, tfl.SubGraphStartOperatorsVector, operators)
        name = b.CreateString("main")
        tfl.SubGraphStart(b)
        tfl.SubGraphAddTensors(b, tensors_v)
        tfl.SubGraphAddInputs(b, inputs_v)
        tfl.SubGraphAddOutputs(b, outputs_v)
        tfl.SubGraphAddOperators(b, ops_v)
        tfl.SubGraphAddName(b, name)
        subgraph = tfl.SubGraphEnd(b)

        subgraphs_v = self._offsets(b, tfl.ModelStartSubgraphsVector, [subgraph])
        opcodes_v = self._offsets(b, tfl.ModelStartOperatorCodesVector, opcodes)
        buffers_v = self._offsets(b, tfl.ModelStartBuffersVector, buffers)
        metadata_v = self._offsets(b, tfl.ModelStartMetadataVector, metadata) if metadata else None
        desc = b.CreateString(self.description)
        tfl.ModelStart(b)
        tfl.ModelAddVersion(b, 3)
        tfl.ModelAddOperatorCodes(b, opcodes_v)
        tfl.ModelAddSubgraphs(b, subgraphs_v)
        tfl.ModelAddDescription(b, desc)
        tfl.ModelAddBuffers(b, buffers_v)
        if metadata_v is not None:
            tfl.ModelAddMetadata(b, metadata_v)
        b.Finish(tfl.ModelEnd(b), file_identifier=b"TFL3")
        return bytes(b.Output())

    @staticmethod
    def _offsets(b, start, items) -> int:
        start(b, len(items))
        for it in reversed(items):
            b.PrependUOffsetTRelative(it)
        return b.EndVector()

    @staticmethod
    def _ints(b, start, items) -> int:
        start(b, len(items))
        for it in reversed(items):
            b.PrependInt32(int(it))
        return b.EndVector()

    def _buffer(self, b, data: bytes) -> int:
        vec = None
        if data:
            b.StartVector(1, len(data), BUFFER_ALIGNMENT)
            b.head -= len(data)
            b.Bytes[b.head : b.head + len(data)] = data
            vec = b.EndVector()
        self.tfl.BufferStart(b)
        if vec is not None:
            self.tfl.BufferAddData(b, vec)
        return self.tfl.BufferEnd(b)

    def _tensor(self, b, t: _Tensor) -> int:
        tfl = self.tfl
        fixed = [max(d, 1) for d in t.shape]
        shape_v = self._ints(b, tfl.TensorStartShapeVector, fixed)
        signature = t.signature if t.signature is not None else (t.shape if -1 in t.shape else None)
        sig_v = self._ints(b, tfl.TensorStartShapeSignatureVector, signature) if signature is not None else None
        quant = None
        if t.scales is not None:
            tfl.QuantizationParametersStartScaleVector(b, len(t.scales))
            for s in reversed(t.scales):
                b.PrependFloat32(s)
            scale_v = b.EndVector()
            zps = t.zero_points or (0,) * len(t.scales)
            tfl.QuantizationParametersStartZeroPointVector(b, len(zps))
            for z in reversed(zps):
                b.PrependInt64(z)
            zp_v = b.EndVector()
            tfl.QuantizationParametersStart(b)
            tfl.QuantizationParametersAddScale(b, scale_v)
            tfl.QuantizationParametersAddZeroPoint(b, zp_v)
            tfl.QuantizationParametersAddQuantizedDimension(b, t.quantized_dimension)
            quant = tfl.QuantizationParametersEnd(b)
        name = b.CreateString(t.name)
        tfl.TensorStart(b)
        tfl.TensorAddShape(b, shape_v)
        if sig_v is not None:
            tfl.TensorAddShapeSignature(b, sig_v)
        tfl.TensorAddType(b, getattr(tfl.TensorType, _NP_TO_TFL[t.dtype]))
        tfl.TensorAddBuffer(b, t.buffer)
        tfl.TensorAddName(b, name)
        if quant is not None:
            tfl.TensorAddQuantization(b, quant)
        return tfl.TensorEnd(b)

    def _operator(self, b, op: _Op, opcode_index: int) -> int:
        tfl = self.tfl
        options = None
        if op.options_name:
            getattr(tfl, f"{op.options_name}Start")(b)
            for field_name, value in op.options.items():
                getattr(tfl, f"{op.options_name}Add{field_name}")(b, value)
            options = getattr(tfl, f"{op.options_name}End")(b)
        ins_v = self._ints(b, tfl.OperatorStartInputsVector, op.inputs)
        outs_v = self._ints(b, tfl.OperatorStartOutputsVector, op.outputs)
        tfl.OperatorStart(b)
        tfl.OperatorAddOpcodeIndex(b, opcode_index)
        tfl.OperatorAddInputs(b, ins_v)
        tfl.OperatorAddOutputs(b, outs_v)
        if options is not None:
            tfl.OperatorAddBuiltinOptionsType(b, getattr(tfl.BuiltinOptions, op.options_name))
            tfl.OperatorAddBuiltinOptions(b, options)
        return tfl.OperatorEnd(b)
