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

from ..core.cpu import int8_kernels_saturate
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
    # nodes to keep in float (fp32): accuracy-aware mixed precision, found by converters/repair.py
    float_nodes: frozenset[str] = frozenset()


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
    """fp16 everywhere except nodes whose activations, measured on the data, leave fp16's range (they would
    compute inf) and nodes the mixed-precision repair chose: those stay fp32 between casts."""
    from .repair import fp16_overflow_nodes

    data = opts.calibration if opts.calibration is not None else opts.shared.get("parity.inputs")
    overflow = fp16_overflow_nodes(model, [(n.name, n.input, n.output) for n in model.graph.node], data, opts.shared)
    block = sorted(set(overflow) | set(opts.float_nodes) | _shape_arithmetic(model))
    with preserved_logging():
        from onnxruntime.transformers.float16 import convert_float_to_float16

        from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

        # Range binds start/limit/delta to one type: half-converted it fails to load (YOLOv8's anchor grid)
        out = convert_float_to_float16(copy.deepcopy(model), keep_io_types=True, node_block_list=block or None,
                                       op_block_list=[*DEFAULT_OP_BLOCK_LIST, "Range"])
    _drop_fp16_round_trips(out)
    onnx_graph.topological_sort(out)
    info = QuantInfo("fp16", "fp16 (fp32 at inputs/outputs)")
    if block:
        info.activations += f"; {len(block)} node(s) kept fp32"
        info.details["fp32_nodes"] = block
    if overflow:
        info.details["fp16_overflow_nodes"] = sorted(overflow)
        info.warnings.append(f"{len(overflow)} node(s) see activations beyond half fp16's range (65504) on "
                             f"{data.source} data and stay fp32: {', '.join(sorted(overflow)[:6])}"
                             + (" ..." if len(overflow) > 6 else ""))
    return out, info


MIN_PER_CHANNEL_OPSET = 13  # DequantizeLinear's axis attribute (per-channel weights) arrived in opset 13


def _per_channel_opset(model, notes: list[str]):
    """Per-channel int8 weights need opset 13: older graphs (opset 11/12 exports, tf2onnx's defaults) are
    upgraded with onnx's version converter, and the report says so."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), MIN_PER_CHANNEL_OPSET)
    if opset >= MIN_PER_CHANNEL_OPSET:
        return model
    from onnx import version_converter

    from .torch_export import one_line

    try:
        upgraded = version_converter.convert_version(model, MIN_PER_CHANNEL_OPSET)
        onnx_graph.check_model(upgraded, "the opset-upgraded graph")
    except Exception as e:
        raise QuantizationError(f"per-channel int8 needs ONNX opset {MIN_PER_CHANNEL_OPSET} and upgrading this opset-"
                                f"{opset} graph failed ({one_line(e)}); re-export it with opset >= 13") from e
    notes.append(f"the graph was upgraded from opset {opset} to {MIN_PER_CHANNEL_OPSET} for per-channel int8 weights")
    return upgraded


def _pre_process(quant_pre_process, src: Path, pre: Path, notes: list[str]) -> None:
    """ORT's pre-processing (symbolic shape inference, then optimization and ONNX shape inference). Symbolic
    inference fails on many exported graphs with dynamic dims ("Incomplete symbolic shape inference"): retry
    without it, then quantize the graph as it is; the report says which step was skipped."""
    import shutil

    from .torch_export import one_line

    try:
        quant_pre_process(str(src), str(pre))
        return
    except Exception as e:
        first = one_line(e)
    try:
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        notes.append(f"symbolic shape inference failed ({first[:80]}); pre-processed without it")
    except Exception as e:
        shutil.copyfile(src, pre)
        notes.append(f"ORT's quantization pre-processing failed ({one_line(e)[:80]}); quantized the graph as exported")


def _shape_arithmetic(model, depth: int = 4) -> set[str]:
    """Nodes computing a Range's float operands (YOLOv8's anchor grid: Shape -> Cast -> Gather -> Range): ORT's fp16
    converter half-converts the chain and the model fails to load ("Type parameter (T) of Optype (Range) bound to
    different types"), so the chain stays fp32; it is index arithmetic, not compute."""
    producer = {o: n for n in model.graph.node for o in n.output}
    out: set[str] = set()
    frontier = [i for n in model.graph.node if n.op_type == "Range" for i in n.input]
    for _ in range(depth):
        nxt = []
        for name in frontier:
            n = producer.get(name)
            if n is not None and n.name not in out and n.op_type not in ("Conv", "MatMul", "Gemm"):
                out.add(n.name)
                nxt.extend(n.input)
        frontier = nxt
    return out


def _drop_fp16_round_trips(model) -> None:
    """ORT's fp16 converter casts every kept-fp32 node's output to fp16 and back before the next kept-fp32
    node: a value beyond 65504 becomes inf between two fp32 nodes. Consumers of such a round trip read the
    fp32 value directly; casts nothing reads any more are dropped."""
    FLOAT, FLOAT16 = 1, 10
    producer = {o: n for n in model.graph.node for o in n.output}

    def cast_to(n) -> int | None:
        return next((a.i for a in n.attribute if a.name == "to"), None) if n.op_type == "Cast" else None

    rename: dict[str, str] = {}
    for n in model.graph.node:
        src = producer.get(n.input[0]) if n.input else None
        if cast_to(n) == FLOAT and src is not None and cast_to(src) == FLOAT16:
            origin = producer.get(src.input[0])
            if origin is not None and cast_to(origin) != FLOAT16:  # the fp16 cast read a computed fp32 value
                rename[n.output[0]] = src.input[0]
    if not rename:
        return
    outputs = {o.name for o in model.graph.output}
    for n in model.graph.node:
        for i, name in enumerate(n.input):
            if name in rename and name not in outputs:
                n.input[i] = rename[name]
    used = {i for n in model.graph.node for i in n.input} | outputs
    while True:
        dead = [n for n in model.graph.node if n.op_type == "Cast" and all(o not in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            model.graph.node.remove(n)
        used = {i for n in model.graph.node for i in n.input} | outputs


class _Reader:
    """Feeds calibration samples to ORT's calibrator, in batches the model accepts."""

    def __init__(self, data: InputSet, model) -> None:
        from ..runtimes.base import fixed_batch, iter_batches

        specs = onnx_graph.input_specs(model)
        self._it = (feeds for feeds, _ in iter_batches(data, fixed_batch(specs, data.unbatched), 16))

    def get_next(self):
        return next(self._it, None)


SATURATION_NOTE = ("int8 weights use 7 bits (ONNX Runtime's reduce_range): this x86 CPU has AVX2 but no VNNI, where "
                   "ONNX Runtime's uint8 x int8 kernels saturate full-range weights; such an artifact computes the same "
                   "on every CPU (convert on a VNNI or ARM machine for 8-bit weights, when the device has VNNI or is ARM)")


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

    notes: list[str] = []
    model = _per_channel_opset(model, notes)
    # ORT's tools write scratch files (sym_shape_infer_temp.onnx, <uuid>.data) into the working directory
    with tempfile.TemporaryDirectory(prefix="edge-int8-") as tmp, preserved_logging(), contextlib.chdir(tmp):
        src, pre, dst = (Path(tmp) / n for n in ("src.onnx", "pre.onnx", "int8.onnx"))
        onnx.save_model(model, str(src))
        _pre_process(quant_pre_process, src, pre, notes)
        reduce_range = int8_kernels_saturate()
        if reduce_range:
            notes.append(SATURATION_NOTE)
        try:
            q.quantize_static(
                str(pre), str(dst), _Reader(opts.calibration, model),
                quant_format=q.QuantFormat.QDQ, per_channel=True, reduce_range=reduce_range,
                activation_type=act, weight_type=q.QuantType.QInt8,
                calibrate_method=methods[opts.calibration_method],
                nodes_to_exclude=sorted(opts.float_nodes),
                extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
            )
        except Exception as e:
            from .torch_export import one_line

            raise QuantizationError(f"ONNX Runtime's static int8 quantizer failed on this graph: {one_line(e)}") from e
        out = onnx.load(str(dst))
    onnx_graph.prune_opset_imports(out)
    if not any(n.op_type == "DequantizeLinear" for n in out.graph.node):
        raise QuantizationError("int8 quantized nothing in this model (no Conv, MatMul, Gemm or other op ONNX Runtime "
                                "quantizes reads a constant weight); convert it with -q fp16 or -q none")
    info = QuantInfo(
        "int8 per-channel symmetric",
        f"{opts.activation_type} per-tensor asymmetric, {opts.calibration_method} calibration",
        details={"weight_bits": 7 if reduce_range else 8, "calibration_samples": opts.calibration.num_samples,
                 "calibration_source": opts.calibration.source,
                 "synthetic_ranges": opts.calibration.synthetic},
    )
    if notes:
        info.details["notes"] = notes
        info.warnings.extend(notes)
    if opts.float_nodes:
        info.details["fp32_nodes"] = sorted(opts.float_nodes)
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
        reduce_range = int8_kernels_saturate()
        q.quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul"], reduce_range=reduce_range,
                           weight_type=q.QuantType.QInt8, per_channel=False)
        out = onnx.load(str(dst))
    onnx_graph.prune_opset_imports(out)
    quantized = sum(1 for n in out.graph.node if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul"))
    info.details = {"matmuls": n_matmul, "quantized_matmuls": quantized, "weight_bits": 7 if reduce_range else 8}
    if reduce_range:
        info.details["notes"] = [SATURATION_NOTE]
        info.warnings.append(SATURATION_NOTE)
    if quantized == 0:
        raise QuantizationError("int8-dynamic reaches no weight in this model: it has no MatMul with constant weights; "
                                "use -q int8 (static) for convolution nets")
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
        quantizer = MatMulNBitsQuantizer(m, bits=4, block_size=opts.block_size, is_symmetric=opts.symmetric,
                                         nodes_to_exclude=sorted(opts.float_nodes))
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
        what = f" (its weights are in {', '.join(kept)})" if kept else ""
        raise QuantizationError(f"int4 reaches no weight in this model: it has no MatMul/Gemm with constant weights"
                                f"{what}; use -q int8 for convolution nets")
    if opts.float_nodes:
        info.details["fp32_nodes"] = sorted(opts.float_nodes)
    return out, info


def _palettize(bits: int):
    def apply(model, opts: ConvertOptions):
        raise QuantizationError(f"palettize{bits} (k-means lookup-table weights) is a Core ML mode: use --to coreml")
    return apply


register_quant_mode("palettize4", tag="pal4", summary="4-bit k-means lookup-table weights (Core ML)")(_palettize(4))
register_quant_mode("palettize6", tag="pal6", summary="6-bit k-means lookup-table weights (Core ML)")(_palettize(6))
