"""TFLite target: lower the fp32 ONNX base graph to a .tflite flatbuffer (no TensorFlow), then load it
back in LiteRT for the parity report. Modes: ``none`` (fp32), ``fp16`` (fp16 weights with DEQUANTIZE,
as TFLite's own converter does), ``int8-dynamic`` and ``int4`` (hybrid kernels), ``int8`` (full integer)."""

from __future__ import annotations

import numpy as np

from ..core.atomic import StagingDir
from ..core.tensors import TensorSpec
from ..runtimes.base import Session
from ..errors import CalibrationError, ConversionError, QuantizationError, require
from .graph import shared_graph
from .quantize import QuantInfo, QuantMode, ConvertOptions
from .targets import register_target
from .to_onnx import BuiltArtifact

TFLITE_MODES = ("none", "fp16", "int8-dynamic", "int8", "int4")
_WEIGHTS = {"none": "fp32", "fp16": "fp16", "int8-dynamic": "int8", "int8": "fp32", "int4": "int4"}


def _check_supported(graph) -> None:
    from .tflite.lower import check_supported

    check_supported(graph)


@register_target("tflite", suffix=".tflite", fixed_batch=True, precheck=_check_supported,
                 repairable=("int8",), dynamic_dims=True)
def build_tflite(base_model, mode: QuantMode, opts: ConvertOptions, staging: StagingDir, name: str) -> BuiltArtifact:
    if mode.name not in TFLITE_MODES:
        raise QuantizationError(
            f"--to tflite supports --quantize {', '.join(TFLITE_MODES)} so far, not '{mode.name}'")
    require("ai_edge_litert", "tflite", "Checking .tflite artifacts in LiteRT")
    from ..runtimes.tflite import open_litert
    from .tflite.lower import lower_builder

    graph = shared_graph(base_model, opts.shared)  # every mode lowers the same prepared graph
    ranges = None
    if mode.name == "int8":
        if opts.calibration is None:
            raise CalibrationError(
                "int8 needs calibration data: pass --calibration FILE.npz (arrays keyed by input name, "
                "first axis = samples) or --calibration random for synthetic ranges")
        from .tflite.calibrate import calibrate_ranges

        ranges = calibrate_ranges(graph, opts.calibration)
    float_ops: list[str] = []
    int8_io = opts.int8_io and mode.name == "int8"
    lowering = dict(weights=_WEIGHTS[mode.name], nhwc_io=opts.nhwc_io, ranges=ranges, int8_io=int8_io,
                    description=f"edgelift: {name} ({mode.tag})", keep_float=opts.float_nodes)
    dynamic = opts.shared.get("lowering.dynamic")
    lowering["resizable"] = bool(dynamic)
    builder = lower_builder(graph, float_ops=float_ops, **lowering)
    step = None
    if dynamic:  # '?' in --input-shape: find the size step at which the lowered model is resizable
        from .graph import graph_at
        from .tflite.dynamic import keep_dims_dynamic

        def lower_at(shapes):
            return lower_builder(graph_at(base_model, opts.shared, shapes), **lowering)

        step = keep_dims_dynamic(builder, lower_at, opts.shared["lowering.shapes"], dynamic)
    data = builder.finish()
    file_name = f"{name}.{mode.tag}.tflite"
    staging.file(file_name).write_bytes(data)
    _smoke_load(staging.file(file_name))
    session = open_litert(staging.file(file_name), None)
    import ai_edge_litert

    storage = _weight_storage(session.interpreter)
    info = QuantInfo({"none": "fp32", "fp16": "fp16 (DEQUANTIZE to fp32)",
                      "int8-dynamic": "int8 per-channel symmetric (CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED)",
                      "int8": "int8 per-channel symmetric, int32 biases (s_in * s_w)",
                      "int4": "int4 per-channel symmetric for FULLY_CONNECTED; int8 per-channel for CONV_2D and "
                              "DEPTHWISE_CONV_2D (LiteRT's hybrid convolutions take int8)"}[mode.name],
                     {"int8-dynamic": "fp32, quantized to int8 at run time (hybrid kernels)",
                      "int4": "fp32, quantized to int8 at run time (hybrid kernels)",
                      "int8": "int8 per-tensor asymmetric, min/max calibrated; float I/O with QUANTIZE/DEQUANTIZE"
                      }.get(mode.name, "fp32"),
                     details={"transpose_ops": count_ops(session.interpreter, "TRANSPOSE"),
                              "pad_ops": count_ops(session.interpreter, "PAD") + count_ops(session.interpreter, "PADV2")})
    if opts.float_nodes:
        info.details["fp32_nodes"] = sorted(opts.float_nodes)
    if step is not None:
        info.details["dynamic_dims"] = {n: {str(a): step for a in axes} for n, axes in dynamic.items()}
        if step > 1:
            info.warnings.append(f"the dims kept dynamic resize in steps of {step} (sizes that are multiples of "
                                 f"{step}); the runtime refuses other sizes")
    if float_ops:
        from collections import Counter

        listed = ", ".join(f"{op}×{n}" for op, n in Counter(float_ops).most_common())
        info.details["float_ops"] = len(float_ops)
        info.warnings.append(f"{len(float_ops)} op(s) have no int8 lowering yet and run in float between "
                             f"DEQUANTIZE/QUANTIZE: {listed}")
    if mode.name in ("int8-dynamic", "int4") and count_ops(session.interpreter, "CONV_2D") + count_ops(
            session.interpreter, "DEPTHWISE_CONV_2D"):
        info.warnings.append("dynamic-range int8 convolutions run ~4.5x slower than fp32 in LiteRT "
                             "(toolchain.md); full-integer int8 is the fast mode for CNNs")
    parameters = weight_parameters(base_model, opts.shared)
    if int8_io:
        info.activations += "; int8 inputs/outputs (--int8-io)"
        session = _FloatIOView(session)
    if opts.nhwc_io:
        session = _NchwView(session)
    return BuiltArtifact(staging.out_dir / file_name, [file_name], session,
                         f"litert {getattr(ai_edge_litert, '__version__', '')}".strip(), info, parameters, storage)


_SMOKE = ("import sys\nfrom ai_edge_litert.interpreter import Interpreter\n"
          "Interpreter(model_path=sys.argv[1]).allocate_tensors()\n")


def _smoke_load(path) -> None:
    """Load the new file in a child process first: LiteRT aborts the process (no exception) on some
    malformed models, and a converter bug must not take the user's process down with it."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", _SMOKE, str(path)], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        last = next((ln for ln in reversed(r.stderr.strip().splitlines()) if ln.strip()), f"exit code {r.returncode}")
        raise ConversionError(f"LiteRT cannot load the generated {path.name} (a converter bug; please report it): "
                              f"{last[:200]}")


class _NchwView(Session):
    """Presents an NHWC-I/O artifact in the source's NCHW layout, so parity compares like with like."""

    def __init__(self, inner: Session) -> None:
        self.inner = inner
        self.interpreter = inner.interpreter
        self.inputs = [TensorSpec(s.name, _to_nchw(s.shape), s.dtype, s.quantization) for s in inner.inputs]
        self.outputs = [TensorSpec(s.name, _to_nchw(s.shape), s.dtype, s.quantization) for s in inner.outputs]

    def run(self, feeds):
        nhwc = {k: v.transpose(0, 2, 3, 1) if v.ndim == 4 else v for k, v in feeds.items()}
        return {k: v.transpose(0, 3, 1, 2) if v.ndim == 4 else v for k, v in self.inner.run(nhwc).items()}


class _FloatIOView(Session):
    """Presents an int8-I/O artifact with float inputs/outputs, quantized with the model's own
    parameters, so parity measures the model and not the caller's rounding."""

    def __init__(self, inner: Session) -> None:
        self.inner = inner
        self.interpreter = inner.interpreter
        self._in = {s.name: s for s in inner.inputs}
        self._out = {s.name: s for s in inner.outputs}
        self.inputs = [TensorSpec(s.name, s.shape, "float32" if s.quantization else s.dtype) for s in inner.inputs]
        self.outputs = [TensorSpec(s.name, s.shape, "float32" if s.quantization else s.dtype) for s in inner.outputs]

    def run(self, feeds):
        q = {}
        for k, v in feeds.items():
            spec = self._in[k]
            if spec.quantization:
                s, z = spec.quantization.scales[0], spec.quantization.zero_points[0]
                info = np.iinfo(spec.dtype)
                v = np.clip(np.round(v / s) + z, info.min, info.max).astype(spec.dtype)
            q[k] = v
        out = {}
        for k, v in self.inner.run(q).items():
            spec = self._out[k]
            if spec.quantization:
                v = (v.astype(np.float32) - spec.quantization.zero_points[0]) * np.float32(spec.quantization.scales[0])
            out[k] = v
        return out


def _to_nchw(shape):
    return (shape[0], shape[3], shape[1], shape[2]) if len(shape) == 4 else shape


def count_ops(interpreter, op_name: str) -> int:
    return sum(1 for op in interpreter._get_ops_details() if op["op_name"] == op_name)


def _weight_storage(interpreter) -> dict[str, int]:
    """Bytes of constant tensors by dtype (tensors whose data lives in the file)."""
    storage: dict[str, int] = {}
    produced = {i for op in interpreter._get_ops_details() for i in op["outputs"]}
    inputs = {d["index"] for d in interpreter.get_input_details()}
    for d in interpreter.get_tensor_details():
        if d["index"] in produced or d["index"] in inputs:
            continue
        dt = np.dtype(d["dtype"])
        storage[dt.name] = storage.get(dt.name, 0) + int(np.prod(d["shape"])) * dt.itemsize
    return storage


def weight_parameters(base_model, shared: dict) -> int:
    if "lowering.parameters" not in shared:
        from .onnx_graph import describe_weights

        shared["lowering.parameters"] = describe_weights(base_model).parameters
    return shared["lowering.parameters"]

