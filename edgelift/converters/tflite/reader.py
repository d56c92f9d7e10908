"""``edge inspect`` of a .tflite file, read by the project's bounded flatbuffer reader (``core/tflite.py``):
no ``tflite`` or ``flatbuffers`` package, so a device's base install inspects what it runs."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from ...core.tensors import QuantParams, TensorSpec
from ...core.tflite import TFLiteTensor, check_tflite
from ...core.tflite_schema import BUILTIN_OPERATORS, TENSOR_TYPES
from ...errors import shown
from ...runtimes.tflite import WEIGHT_OPS


def _spec(t: TFLiteTensor) -> TensorSpec:
    sig = t.shape_signature or t.shape
    q = None
    if t.scales:
        q = QuantParams(tuple(t.scales), tuple(t.zero_points), t.quantized_dimension if len(t.scales) > 1 else None)
    return TensorSpec(shown(t.name, 200), tuple(None if d < 0 else d for d in sig), TENSOR_TYPES.get(t.type, "?").lower(), q)


def inspect_tflite(path: Path):
    from ..inspect import InspectReport
    from ..onnx_graph import DtypeStats

    model = check_tflite(path)  # every index, type and shape checked before it is used
    sg = model.subgraphs[0]
    op_types = [BUILTIN_OPERATORS.get(model.opcodes[op], f"op{model.opcodes[op]}") for op, _, _ in sg.operators]
    weights = {i for (_, ins, _), kind in zip(sg.operators, op_types) if kind in WEIGHT_OPS for i in ins[1:] if i >= 0}
    stats: dict[str, DtypeStats] = {}
    parameters = 0
    quantized: Counter[str] = Counter()
    for i, t in enumerate(sg.tensors):
        inline, _, external = model.buffers[t.buffer]
        nbytes = inline or external
        if not nbytes:
            continue
        s = _spec(t)
        n = 1
        for d in t.shape:
            n *= d or 1
        if s.dtype in ("int32", "int64") and i not in weights:
            continue  # shapes, axes, permutations
        if n <= 1:
            continue  # scalars: constants of the graph (eps, 1/sqrt(d)), not parameters
        st = stats.setdefault(s.dtype, DtypeStats())
        st.tensors, st.elements, st.bytes = st.tensors + 1, st.elements + n, st.bytes + nbytes
        parameters += n
        if s.quantization is not None and s.dtype in ("int8", "uint8", "int4"):
            gran = f"per-channel (axis {s.quantization.axis})" if s.quantization.axis is not None else "per-tensor"
            quantized[f"{s.dtype} {gran}"] += 1
    return InspectReport(
        str(path), "tflite", path.stat().st_size, [_spec(sg.tensors[i]) for i in sg.inputs],
        [_spec(sg.tensors[i]) for i in sg.outputs], dict(Counter(op_types).most_common()), parameters, stats,
        [f"{n} × {k} weights" for k, n in sorted(quantized.items())],
        {"schema_version": str(model.version), "description": shown(model.description, 200)},
    )
