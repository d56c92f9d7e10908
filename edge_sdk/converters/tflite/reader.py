"""Read a .tflite flatbuffer (the ``tflite`` package's generated readers) for ``edge inspect``."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from ...core.tensors import QuantParams, TensorSpec
from ...errors import ModelFormatError, require
from ...runtimes.tflite import WEIGHT_OPS



def _enum_names(enum_cls) -> dict[int, str]:
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_") and isinstance(v, int)}


def inspect_tflite(path: Path):
    from ..inspect import InspectReport
    from ..onnx_graph import DtypeStats

    tfl = require("tflite", "convert", "Inspecting .tflite files")
    data = path.read_bytes()
    try:
        model = tfl.Model.GetRootAsModel(data, 0)
        sg = model.Subgraphs(0)
        ops_names = _enum_names(tfl.BuiltinOperator)
        types = _enum_names(tfl.TensorType)
        codes = [max(model.OperatorCodes(i).BuiltinCode(), model.OperatorCodes(i).DeprecatedBuiltinCode())
                 for i in range(model.OperatorCodesLength())]
        ops = [sg.Operators(i) for i in range(sg.OperatorsLength())]
        op_types = [ops_names.get(codes[op.OpcodeIndex()], f"op{codes[op.OpcodeIndex()]}") for op in ops]
        tensors = [sg.Tensors(i) for i in range(sg.TensorsLength())]
    except Exception as e:  # flatbuffers raises IndexError/struct.error on garbage
        raise ModelFormatError(f"{path} is not a readable TFLite flatbuffer ({type(e).__name__}); convert it again") from e

    def spec(i: int) -> TensorSpec:
        t = tensors[i]
        sig = t.ShapeSignatureAsNumpy() if t.ShapeSignatureLength() else t.ShapeAsNumpy()
        shape = tuple(None if int(d) < 0 else int(d) for d in np.atleast_1d(sig)) if t.ShapeLength() else ()
        q = t.Quantization()
        qp = None
        if q is not None and q.ScaleLength():
            qp = QuantParams(tuple(float(s) for s in q.ScaleAsNumpy()), tuple(int(z) for z in q.ZeroPointAsNumpy()),
                             q.QuantizedDimension() if q.ScaleLength() > 1 else None)
        return TensorSpec(t.Name().decode(), shape, types.get(t.Type(), "?").lower(), qp)

    weights: set[int] = set()
    for op, kind in zip(ops, op_types):
        if kind in WEIGHT_OPS:
            weights.update(int(i) for i in op.InputsAsNumpy()[1:] if i >= 0)
    stats: dict[str, DtypeStats] = {}
    parameters = 0
    quantized: Counter[str] = Counter()
    for i, t in enumerate(tensors):
        buf = model.Buffers(t.Buffer())
        if buf is None or buf.DataLength() == 0:
            continue
        s = spec(i)
        n = int(np.prod([d or 1 for d in s.shape])) if s.shape else 1
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
    return InspectReport(
        str(path), "tflite", path.stat().st_size,
        [spec(int(i)) for i in sg.InputsAsNumpy()], [spec(int(i)) for i in sg.OutputsAsNumpy()],
        dict(Counter(op_types).most_common()), parameters, stats,
        [f"{n} × {k} weights" for k, n in sorted(quantized.items())],
        {"schema_version": str(model.Version()),
         "description": (model.Description() or b"").decode(errors="replace")},
    )
