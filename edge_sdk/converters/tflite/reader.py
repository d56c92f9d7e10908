"""Read a .tflite flatbuffer (the ``tflite`` package's generated readers) for ``edge inspect``."""

from __future__ import annotations

import struct
from collections import Counter
from pathlib import Path

import numpy as np

from ...core.tensors import QuantParams, TensorSpec
from ...core.tflite import check_tflite
from ...errors import ModelFormatError, require, shown
from ...runtimes.tflite import WEIGHT_OPS



def _enum_names(enum_cls) -> dict[int, str]:
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_") and isinstance(v, int)}


def inspect_tflite(path: Path):
    """``edge inspect`` of a .tflite file. The flatbuffer is read lazily by the generated accessors, which do
    not bounds-check: every read happens inside one error boundary and every vector length is checked
    against the file size before it drives a loop."""
    check_tflite(path)  # indices and sizes the generated accessors below would trust
    tfl = require("tflite", "convert", "Inspecting .tflite files")
    data = path.read_bytes()
    try:
        return _inspect(path, data, tfl)
    except ModelFormatError:
        raise
    except (struct.error, IndexError, TypeError, ValueError, UnicodeDecodeError, AttributeError, OverflowError,
            KeyError, RecursionError) as e:  # the accessors read garbage offsets as struct.error/IndexError
        raise ModelFormatError(f"{path} is not a readable TFLite flatbuffer ({type(e).__name__}); convert it again") from e


def _inspect(path: Path, data: bytes, tfl):
    from ..inspect import InspectReport
    from ..onnx_graph import DtypeStats

    def length(n: int, what: str) -> int:
        if not 0 <= n <= len(data) // 4:  # every element takes at least 4 bytes (an offset)
            raise ModelFormatError(f"{path}: the flatbuffer's {what} vector claims {n} entries in a {len(data)}-byte "
                                   "file; the file is corrupted")
        return n

    model = tfl.Model.GetRootAsModel(data, 0)
    if length(model.SubgraphsLength(), "subgraphs") < 1:
        raise ModelFormatError(f"{path} holds no subgraph; it is not a TFLite model")
    sg = model.Subgraphs(0)
    ops_names = _enum_names(tfl.BuiltinOperator)
    types = _enum_names(tfl.TensorType)
    codes = [max(model.OperatorCodes(i).BuiltinCode(), model.OperatorCodes(i).DeprecatedBuiltinCode())
             for i in range(length(model.OperatorCodesLength(), "operator codes"))]
    ops = [sg.Operators(i) for i in range(length(sg.OperatorsLength(), "operators"))]
    op_types = []
    for op in ops:
        index = op.OpcodeIndex()
        if not 0 <= index < len(codes):
            raise ModelFormatError(f"{path}: an operator uses opcode {index} of {len(codes)}; the file is corrupted")
        op_types.append(ops_names.get(codes[index], f"op{codes[index]}"))
    tensors = [sg.Tensors(i) for i in range(length(sg.TensorsLength(), "tensors"))]
    n_buffers = length(model.BuffersLength(), "buffers")

    def tensor(i: int):
        if not 0 <= i < len(tensors):
            raise ModelFormatError(f"{path}: tensor index {i} is outside the {len(tensors)} tensors; the file is corrupted")
        return tensors[i]

    def spec(i: int) -> TensorSpec:
        t = tensor(i)
        sig = t.ShapeSignatureAsNumpy() if t.ShapeSignatureLength() else t.ShapeAsNumpy()
        shape = tuple(None if int(d) < 0 else int(d) for d in np.atleast_1d(sig)) if t.ShapeLength() else ()
        q = t.Quantization()
        qp = None
        if q is not None and q.ScaleLength():
            qp = QuantParams(tuple(float(s) for s in q.ScaleAsNumpy()), tuple(int(z) for z in q.ZeroPointAsNumpy()),
                             q.QuantizedDimension() if q.ScaleLength() > 1 else None)
        return TensorSpec(shown(t.Name().decode("utf-8", errors="replace"), 200), shape,
                          types.get(t.Type(), "?").lower(), qp)

    weights: set[int] = set()
    for op, kind in zip(ops, op_types):
        if kind in WEIGHT_OPS:
            weights.update(int(i) for i in op.InputsAsNumpy()[1:] if i >= 0)
    stats: dict[str, DtypeStats] = {}
    parameters = 0
    quantized: Counter[str] = Counter()
    for i, t in enumerate(tensors):
        b = t.Buffer()
        buf = model.Buffers(b) if 0 <= b < n_buffers else None
        if buf is None or buf.DataLength() == 0:
            continue
        s = spec(i)
        n = 1
        for d in s.shape:
            n *= d or 1
        if s.dtype in ("int32", "int64") and i not in weights:
            continue  # shapes, axes, permutations
        if n <= 1:
            continue  # scalars: constants of the graph (eps, 1/sqrt(d)), not parameters
        st = stats.setdefault(s.dtype, DtypeStats())
        st.tensors += 1
        st.elements += n
        st.bytes += buf.DataLength()
        parameters += n
        if s.quantization is not None and s.dtype in ("int8", "uint8", "int4"):
            gran = f"per-channel (axis {s.quantization.axis})" if s.quantization.axis is not None else "per-tensor"
            quantized[f"{s.dtype} {gran}"] += 1
    io_index = lambda v: [int(i) for i in np.atleast_1d(v)] if not isinstance(v, int) else []  # noqa: E731
    return InspectReport(
        str(path), "tflite", path.stat().st_size,
        [spec(i) for i in io_index(sg.InputsAsNumpy())], [spec(i) for i in io_index(sg.OutputsAsNumpy())],
        dict(Counter(op_types).most_common()), parameters, stats,
        [f"{n} × {k} weights" for k, n in sorted(quantized.items())],
        {"schema_version": str(model.Version()),
         "description": shown((model.Description() or b"").decode(errors="replace"), 200)},
    )
