"""ONNX quantization modes, one unit each, in a registry keyed by the ``--quantize`` name.

A mode takes the cleaned fp32 ONNX model and returns the quantized model plus a description of
what it did. Modes that ONNX Runtime implements (static QDQ, dynamic, MatMulNBits) call its
quantization tools; all of them restore the logging levels those tools change process-wide.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..core.tensors import InputSet
from ..errors import CalibrationError, QuantizationError, require
from . import onnx_graph


@dataclass
class ConvertOptions:
    """What every target's builder gets besides the model and the mode."""

    calibration: InputSet | None = None
    block_size: int = 32
    symmetric: bool = True
    activation_type: str = "uint8"  # U8S8 is 2x faster than S8S8 on x86 VNNI (toolchain.md)
    calibration_method: str = "minmax"
    nhwc_io: bool = False  # tflite: keep 4-D inputs/outputs NHWC instead of the source's NCHW
    int8_io: bool = False  # tflite int8: int8 model inputs/outputs instead of float with (DE)QUANTIZE
    coreml_target: str = "iOS16"  # coreml: minimum deployment target (int4 per-block needs iOS18)
    coreml_precision: str = "fp16"  # coreml: compute precision of the compressed modes
    # per-conversion memo for work every mode of a target shares (e.g. the prepared lowering graph)
    shared: dict = field(default_factory=dict)


@dataclass
class QuantInfo:
    """What a mode did, for the report: weights/activations scheme, notes and warnings."""

    weights: str
    activations: str
    details: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class QuantMode:
    name: str
    tag: str  # file-name suffix: <name>.<tag>.onnx
    summary: str
    needs_calibration: bool
    apply: Callable[[object, ConvertOptions], tuple[object, QuantInfo]]


QUANT_MODES: dict[str, QuantMode] = {}
_ALIASES: dict[str, str] = {}


def register_quant_mode(name: str, *, tag: str, summary: str, needs_calibration: bool = False,
                        aliases: tuple[str, ...] = ()):
    def deco(fn):
        for key in (name, *aliases):
            if key in QUANT_MODES or key in _ALIASES:
                raise ValueError(f"quantization mode '{key}' is already registered")
        QUANT_MODES[name] = QuantMode(name, tag, summary, needs_calibration, fn)
        for a in aliases:
            _ALIASES[a] = name
        return fn

    return deco


def get_mode(name: str) -> QuantMode:
    key = _ALIASES.get(name, name)
    if key not in QUANT_MODES:
        raise QuantizationError(
            f"unknown quantization mode '{name}'; choose one of: {', '.join(QUANT_MODES)}"
        )
    return QUANT_MODES[key]


_ORT_LOGGERS = ("onnxruntime", "onnxruntime.quantization",
                "onnxruntime.quantization.matmul_nbits_quantizer")


@contextlib.contextmanager
def preserved_logging():
    """ORT's quantization modules set the root logger to INFO/WARNING on import and log advice
    through it; keep them quiet while they run and undo their changes afterwards."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    loggers = [root] + [logging.getLogger(n) for n in _ORT_LOGGERS]
    levels = [lg.level for lg in loggers]
    root.setLevel(logging.ERROR)
    for lg in loggers[1:]:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        for h in list(root.handlers):
            if h not in handlers:
                root.removeHandler(h)


def _ort_quant():
    require("onnx", "convert", "Quantizing ONNX models")
    with preserved_logging():
        import onnxruntime.quantization as q
    return q


def _graph_ops(model) -> set[str]:
    return {n.op_type for n in model.graph.node}


# --- modes --------------------------------------------------------------------------------------


@register_quant_mode("none", tag="fp32", summary="fp32 weights and activations", aliases=("fp32",))
def _fp32(model, opts: ConvertOptions):
    return copy.deepcopy(model), QuantInfo("fp32", "fp32")


@register_quant_mode("fp16", tag="fp16", summary="fp16 weights and compute, fp32 inputs/outputs")
def _fp16(model, opts: ConvertOptions):
    with preserved_logging():
        from onnxruntime.transformers.float16 import convert_float_to_float16

        out = convert_float_to_float16(copy.deepcopy(model), keep_io_types=True)
    onnx_graph.topological_sort(out)
    return out, QuantInfo("fp16", "fp16 (fp32 at inputs/outputs)")


class _Reader:
    """Feeds calibration samples to ORT's calibrator, in batches the model accepts."""

    def __init__(self, data: InputSet, model) -> None:
        from ..runtimes.base import fixed_batch, iter_batches

        self._it = (feeds for feeds, _ in iter_batches(data, fixed_batch(onnx_graph.input_specs(model)), 16))

    def get_next(self):
        return next(self._it, None)


@register_quant_mode(
    "int8", tag="int8", needs_calibration=True,
    summary="static QDQ: per-channel symmetric int8 weights, calibrated 8-bit activations",
)
def _int8_static(model, opts: ConvertOptions):
    q = _ort_quant()
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if opts.calibration is None:
        raise CalibrationError(
            "int8 needs calibration data: pass --calibration FILE.npz (arrays keyed by input name, "
            "first axis = samples) or --calibration random for synthetic ranges"
        )
    act = {"uint8": q.QuantType.QUInt8, "int8": q.QuantType.QInt8}.get(opts.activation_type)
    if act is None:
        raise QuantizationError(f"activation type '{opts.activation_type}' unknown; use uint8 or int8")
    methods = {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
               "percentile": q.CalibrationMethod.Percentile}
    if opts.calibration_method not in methods:
        raise QuantizationError(f"calibration method '{opts.calibration_method}' unknown; use {', '.join(methods)}")
    import onnx

    with tempfile.TemporaryDirectory(prefix="edge-int8-") as tmp, preserved_logging():
        src, pre, dst = (Path(tmp) / n for n in ("src.onnx", "pre.onnx", "int8.onnx"))
        onnx.save_model(model, str(src))
        quant_pre_process(str(src), str(pre))
        q.quantize_static(
            str(pre), str(dst), _Reader(opts.calibration, model),
            quant_format=q.QuantFormat.QDQ, per_channel=True,
            activation_type=act, weight_type=q.QuantType.QInt8,
            calibrate_method=methods[opts.calibration_method],
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
        )
        out = onnx.load(str(dst))
    onnx_graph.prune_opset_imports(out)
    info = QuantInfo(
        "int8 per-channel symmetric",
        f"{opts.activation_type} per-tensor asymmetric, {opts.calibration_method} calibration",
        details={"calibration_samples": opts.calibration.num_samples,
                 "calibration_source": opts.calibration.source,
                 "synthetic_ranges": opts.calibration.synthetic},
    )
    if opts.calibration.synthetic:
        info.warnings.append("activation ranges were calibrated on random data (synthetic): "
                             "accuracy figures of this artifact are not representative")
    return out, info


@register_quant_mode(
    "int8-dynamic", tag="int8-dynamic",
    summary="int8 MatMul weights, activations quantized at run time (transformers)",
)
def _int8_dynamic(model, opts: ConvertOptions):
    q = _ort_quant()
    import onnx

    m = copy.deepcopy(model)
    onnx_graph.gemm_to_matmul(m)
    info = QuantInfo("int8 per-tensor (MatMul weights)", "dynamic uint8 (computed at run time)")
    if "Conv" in _graph_ops(m):
        info.warnings.append(
            "int8-dynamic leaves convolutions in fp32: ONNX Runtime's dynamic ConvInteger is ~4.7x "
            "slower than fp32 on CNNs; use --quantize int8 (static) for conv nets"
        )
    n_matmul = sum(1 for n in m.graph.node if n.op_type == "MatMul")
    with tempfile.TemporaryDirectory(prefix="edge-dyn-") as tmp, preserved_logging():
        src, dst = Path(tmp) / "src.onnx", Path(tmp) / "dyn.onnx"
        onnx.save_model(m, str(src))
        q.quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul"],
                           weight_type=q.QuantType.QInt8, per_channel=False)
        out = onnx.load(str(dst))
    onnx_graph.prune_opset_imports(out)
    quantized = sum(1 for n in out.graph.node if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul"))
    info.details = {"matmuls": n_matmul, "quantized_matmuls": quantized}
    if quantized == 0:
        info.warnings.append("no MatMul with constant weights found: nothing was quantized")
    return out, info


@register_quant_mode(
    "int4", tag="int4",
    summary="weight-only block-wise int4 (MatMulNBits) for MatMul/Gemm weights",
)
def _int4(model, opts: ConvertOptions):
    if opts.block_size not in (32, 64, 128):
        raise QuantizationError(f"--block-size {opts.block_size} unsupported for int4; use 32, 64 or 128")
    _ort_quant()
    with preserved_logging():
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    m = copy.deepcopy(model)
    onnx_graph.gemm_to_matmul(m)
    n_matmul = sum(1 for n in m.graph.node if n.op_type == "MatMul")
    with preserved_logging():
        quantizer = MatMulNBitsQuantizer(m, bits=4, block_size=opts.block_size, is_symmetric=opts.symmetric)
        quantizer.process()
        out = quantizer.model.model
    onnx_graph.prune_opset_imports(out)
    quantized = sum(1 for n in out.graph.node if n.op_type == "MatMulNBits")
    inits = {t.name for t in out.graph.initializer}
    kept = sorted({n.op_type for n in out.graph.node
                   if n.op_type in ("Conv", "ConvTranspose", "MatMul", "Gather")
                   and any(i in inits for i in n.input[:2])})
    info = QuantInfo(
        f"int4 block {opts.block_size} {'symmetric' if opts.symmetric else 'asymmetric (zero points)'}"
        " on MatMul weights",
        "fp32",
        details={"matmuls": n_matmul, "quantized_matmuls": quantized, "block_size": opts.block_size},
    )
    if kept:
        info.warnings.append(f"int4 (MatMulNBits) covers MatMul/Gemm weights only; {', '.join(kept)} weights stay fp32")
    if quantized == 0:
        info.warnings.append("no MatMul/Gemm with constant weights found: nothing was quantized to int4")
    return out, info


def _palettize(bits: int):
    def apply(model, opts: ConvertOptions):
        raise QuantizationError(f"palettize{bits} (k-means lookup-table weights) is a Core ML mode: use --to coreml")
    return apply


register_quant_mode("palettize4", tag="pal4", summary="4-bit k-means lookup-table weights (Core ML)")(_palettize(4))
register_quant_mode("palettize6", tag="pal6", summary="6-bit k-means lookup-table weights (Core ML)")(_palettize(6))
