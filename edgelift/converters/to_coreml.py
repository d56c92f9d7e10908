"""Core ML target: ML Program ``.mlpackage`` files, fp32 / fp16 / weight-compressed.

Torch sources go through coremltools' own torch frontend (``torch.jit.trace``, then the
``torch.export`` path); where that frontend fails (it trails PyTorch releases) and for ONNX sources,
our ONNX -> MIL lowering (``converters/coreml``) builds the program from the same prepared graph the
TFLite lowering uses. Weight compression is coremltools' ``optimize.coreml``. Core ML itself runs only
on Apple systems: elsewhere the parity report runs the saved package in our numpy MIL executor and
says so.
"""

from __future__ import annotations

import platform
import warnings

import numpy as np

from ..core.atomic import StagingDir
from ..core.tensors import TensorSpec
from ..runtimes.base import Session
from ..errors import (ConversionError, InvalidOptionError, MissingDependencyError, QuantizationError, ShapeError,
                      UnsupportedOperatorError, require)
from .coreml.lower import MIN_TARGETS, mil_name
from .graph import shared_graph
from .quantize import ConvertOptions, QuantInfo, QuantMode
from .targets import register_target
from .to_onnx import BuiltArtifact

COREML_MODES = ("none", "fp16", "int8", "int4", "palettize4", "palettize6")
PRECISIONS = ("fp16", "fp32")
INT4_BLOCK = 32
MIN_WEIGHT_ELEMENTS = 2048  # coremltools' default weight_threshold: smaller tensors stay float
FLEXIBLE_BATCH = 64  # upper bound of a flexible batch axis (torch sources with a dynamic batch)


def _check_supported(graph) -> None:
    from .coreml.lower import check_supported

    check_supported(graph)


@register_target("coreml", suffix=".mlpackage", fixed_batch=True, precheck=_check_supported, repairable=("fp16",),
                 dynamic_dims=True)
def build_coreml(base_model, mode: QuantMode, opts: ConvertOptions, staging: StagingDir, name: str) -> BuiltArtifact:
    from .torch_export import quiet_exporter

    with quiet_exporter():  # its import warns about untested torch/scikit-learn versions
        ct = require("coremltools", "coreml", "Converting to Core ML")
    if mode.name not in COREML_MODES:
        raise QuantizationError(f"--to coreml supports --quantize {', '.join(COREML_MODES)}, not '{mode.name}'")
    if opts.coreml_target not in MIN_TARGETS:
        raise InvalidOptionError(f"--coreml-target '{opts.coreml_target}' unknown; choose one of: {', '.join(MIN_TARGETS)}")
    if opts.coreml_precision not in PRECISIONS:
        raise InvalidOptionError(f"--coreml-precision '{opts.coreml_precision}' unknown; choose fp16 or fp32")
    if mode.name == "int4" and MIN_TARGETS[opts.coreml_target] < 18:
        raise InvalidOptionError(f"int4 per-block weights need Core ML on iOS18/macOS15: pass --coreml-target iOS18 "
                                 f"(got {opts.coreml_target})")
    if mode.name.startswith("palettize"):
        require("sklearn", "coreml", "Palettizing Core ML weights (k-means)")
    precision = {"none": "fp32", "fp16": "fp16"}.get(mode.name, opts.coreml_precision)
    model, frontend = _float_model(base_model, opts, precision, ct)
    model, details = _compress(model, mode.name, ct)
    file_name = f"{name}.{mode.tag}.mlpackage"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(str(staging.file(file_name)))
    session, runtime = _session(staging.file(file_name), ct)
    from .onnx_graph import input_specs, output_specs

    renamed = {s.name: mil_name(s.name) for s in [*input_specs(base_model), *output_specs(base_model)]
               if mil_name(s.name) != s.name}
    if renamed:
        session = _OnnxNames(session, renamed)
    step = opts.shared.get("coreml.step") if frontend.startswith("edgelift") else None
    if step is not None:
        _check_resized(session, base_model, opts, step, mode.name)
    info = QuantInfo(
        {"none": "fp32", "fp16": "fp16", "int8": "int8 per-channel symmetric",
         "int4": f"int4 per-block symmetric (block {INT4_BLOCK})", "palettize4": "4-bit k-means lookup tables",
         "palettize6": "6-bit k-means lookup tables"}[mode.name],
        f"{precision} compute", details={"frontend": frontend, "deployment_target": opts.coreml_target,
                                         **({"renamed_features": renamed} if renamed else {}), **details})
    overflow, source, kept = opts.shared.get("coreml.fp16.overflow", ([], "", [])) if precision == "fp16" else ([], "", [])
    if kept:
        info.details["fp32_nodes"] = kept
    if overflow:
        info.details["fp16_overflow_nodes"] = overflow
        info.warnings.append(f"{len(overflow)} node(s) see activations beyond half fp16's range (65504) on {source} "
                             f"data and compute in fp32: {', '.join(overflow[:6])}" + (" ..." if len(overflow) > 6 else ""))
    if step is not None:
        dynamic = opts.shared["lowering.dynamic"]
        info.details["dynamic_dims"] = {n: {str(a): step for a in axes} for n, axes in dynamic.items()}
        if step > 1:
            info.warnings.append(f"the dims kept dynamic resize in steps of {step}: the package lists the multiples of "
                                 f"{step} from half to twice the built size as its enumerated shapes")
    if details.get("skipped"):
        info.warnings.append(f"{len(details['skipped'])} weight tensor(s) left uncompressed: "
                             + "; ".join(f"{s['name']} ({s['reason']})" for s in details["skipped"][:5])
                             + (" ..." if len(details["skipped"]) > 5 else ""))
    if frontend.startswith("edgelift") and any(s.shape and not isinstance(s.shape[0], int)
                                               for s in input_specs(base_model)):
        info.warnings.append("the package has a fixed batch of 1 (our ONNX lowering folds shapes at batch 1); "
                             "convert from the PyTorch source for a flexible batch")
    if runtime.startswith("edgelift"):
        info.warnings.append("Core ML runs only on Apple systems: parity was measured with edgelift's numpy MIL "
                             "executor on the saved package")
    from .to_tflite import weight_parameters

    return BuiltArtifact(staging.out_dir / file_name, [file_name], session, runtime, info,
                         weight_parameters(base_model, opts.shared), _weight_storage(staging.file(file_name)))


def _float_model(base_model, opts: ConvertOptions, precision: str, ct):
    """The uncompressed MLModel at ``precision`` (built once per precision per conversion)."""
    key = f"coreml.{precision}." + ",".join(sorted(opts.float_nodes))  # a repair rebuilds with nodes kept fp32
    if key in opts.shared:
        return opts.shared[key]
    kw = dict(convert_to="mlprogram", minimum_deployment_target=getattr(ct.target, opts.coreml_target),
              compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32)
    from ..converters.torch_export import one_line, quiet_exporter

    model = frontend = None
    src = opts.shared.get("torch.source")
    errors = []
    if src is not None:
        model, frontend = _from_torch(src, base_model, kw, ct, errors)
    if model is None:
        from .coreml.lower import lower_to_mil

        graph = shared_graph(base_model, opts.shared)
        node_ops: dict[str, list[str]] = {}
        dynamic = opts.shared.get("lowering.dynamic")
        if dynamic:  # '?' in --input-shape: a flexible package where the lowering does not depend on the size
            prog, kw["inputs"] = _flexible_program(base_model, graph, node_ops, dynamic, opts, ct)
        else:
            prog = lower_to_mil(graph, opts.coreml_target, node_ops)
        if precision == "fp16":
            kw["compute_precision"] = _fp16_except(graph, node_ops, opts, ct)
        try:
            with quiet_exporter():
                model = ct.convert(prog, **kw)
        except Exception as e:
            raise ConversionError(f"coremltools could not compile the lowered MIL program: {one_line(e)}") from e
        frontend = "edgelift ONNX -> MIL lowering; batch 1" + (f" (coremltools' torch frontend failed: {errors[-1]})"
                                                                if errors else "")
    model = _rename_features(model, base_model, ct)
    opts.shared[key] = (model, frontend)
    return model, frontend


def _check_resized(session, base_model, opts: ConvertOptions, step: int, mode: str) -> None:
    """The saved package at a size it was not built at, against ONNX Runtime on the original: a flexible package
    that answered differently there is refused, not written."""
    import onnxruntime as ort

    from . import parity
    from .resizable import grown

    built = opts.shared["lowering.shapes"]
    at = grown(built, opts.shared["lowering.dynamic"], step)
    data = opts.shared["parity.inputs"].arrays  # the parity data's first sample, wrapped around to the new size
    if "coreml.resize_reference" not in opts.shared:  # one reference session per conversion, for every mode
        opts.shared["coreml.resize_reference"] = ort.InferenceSession(base_model.SerializeToString(),
                                                                      providers=["CPUExecutionProvider"])
    ref = opts.shared["coreml.resize_reference"]

    def cosine_at(shapes) -> float:
        feeds = {}
        for s in session.inputs:
            first = np.asarray(data[s.name][:1]).astype(s.dtype)
            feeds[s.name] = np.pad(first, [(0, max(0, w - d)) for d, w in zip(first.shape, shapes[s.name])], mode="wrap")
        want = ref.run(None, {i.name: feeds[i.name].astype(np.int64) if "int64" in i.type else feeds[i.name]
                              for i in ref.get_inputs()})[0]
        got = np.asarray(session.run(feeds)[session.outputs[0].name])
        return parity.compare_output("y", got.reshape(want.shape), want).cosine_similarity if got.size == want.size else 0.0

    cos = cosine_at(at)
    # resizing must not cost accuracy: held to the mode's floor, or to what the package reaches at its built size
    # when that is lower (a compressed mode's own gate judges the built size)
    floor = min(parity.MIN_COSINE.get(mode, 0.99), cosine_at(built) - 0.005)
    if not cos >= floor:
        shape = "x".join(str(d) for d in next(iter(at.values())))
        raise ShapeError(f"--to coreml: the flexible package does not hold at {shape} (cosine {cos:.4f} against ONNX "
                         f"Runtime, below {floor:.4f}); give the dims a size in --input-shape")


def _flexible_program(base_model, graph, node_ops: dict[str, list[str]], dynamic, opts: ConvertOptions, ct):
    """(MIL program with the kept dims as symbols, ct.convert's input types); the step is found once per conversion."""
    from .coreml.dynamic import flexible_step, input_types
    from .coreml.lower import lower_to_mil
    from .graph import graph_at

    shapes = opts.shared["lowering.shapes"]
    if "coreml.step" not in opts.shared:
        opts.shared["coreml.step"] = flexible_step(
            lambda at: lower_to_mil(graph_at(base_model, opts.shared, at), opts.coreml_target), shapes, dynamic)
    step = opts.shared["coreml.step"]
    try:
        prog = lower_to_mil(graph, opts.coreml_target, node_ops, symbolic=dynamic)
    except UnsupportedOperatorError as e:
        raise ShapeError(f"--to coreml cannot keep the dims dynamic: with flexible sizes {e}; give them a size in "
                         "--input-shape") from e
    return prog, input_types(graph, shapes, dynamic, step, ct)


def _fp16_except(graph, node_ops: dict[str, list[str]], opts: ConvertOptions, ct):
    """fp16 compute, except the MIL ops of nodes whose activations, measured on the data, leave half fp16's range
    (they would compute inf, as the ONNX fp16 mode measures too), and of nodes a repair chose."""
    from .repair import fp16_overflow_nodes

    data = opts.calibration if opts.calibration is not None else opts.shared.get("parity.inputs")
    overflow = fp16_overflow_nodes(graph.model, [(n.name, n.inputs, n.outputs) for n in graph.nodes], data, opts.shared)
    keep = sorted(set(overflow) | set(opts.float_nodes))
    opts.shared["coreml.fp16.overflow"] = (overflow, data.source if data is not None else "", keep)
    if not keep:
        return ct.precision.FLOAT16
    fp32_ops = {op for n in keep for op in node_ops.get(n, ())}
    return ct.transform.FP16ComputePrecision(op_selector=lambda op: op.name not in fp32_ops)


def _from_torch(src, base_model, kw, ct, errors: list[str]):
    """coremltools' torch frontend: the trace path, then torch.export.

    Where the ONNX base graph kept a dynamic batch, the package takes a flexible batch too
    (1..``FLEXIBLE_BATCH``, default 1: a bounded range, which Core ML can plan memory for); a model
    that only converts with a fixed batch gets batch 1 and a note.
    """
    import torch

    from ..converters.torch_export import _with_batch_of_two, one_line, quiet_exporter
    from .onnx_graph import input_specs

    specs = input_specs(base_model)
    flexible = bool(specs) and all(s.shape and not isinstance(s.shape[0], int) for s in specs)
    example = tuple(t[:1] if isinstance(t, torch.Tensor) and t.dim() else t for t in src.example_inputs)

    def inputs(batch):
        return [ct.TensorType(name=s.name, shape=ct.Shape((batch, *t.shape[1:])) if t.dim() else (),
                              dtype=np.float32 if t.is_floating_point() else np.int32)
                for s, t in zip(specs, example)]

    def exported(dynamic: bool):
        if not dynamic:
            return torch.export.export(src.module, example).run_decompositions({})
        args = _with_batch_of_two(example)
        dims = tuple({0: torch.export.Dim("batch", min=1, max=FLEXIBLE_BATCH)} if a.dim() else None for a in args)
        return torch.export.export(src.module, args, dynamic_shapes=dims).run_decompositions({})

    batch_dim = ct.RangeDim(lower_bound=1, upper_bound=FLEXIBLE_BATCH, default=1)
    attempts = []  # (label, flexible, make the program, inputs for ct.convert)
    for flex in ([True, False] if flexible else [False]):
        attempts += [("jit.trace", flex, lambda: torch.jit.trace(src.module, example),
                      inputs(batch_dim if flex else 1)),
                     ("torch.export", flex, lambda f=flex: exported(f), None)]
    for label, flex, make, ins in attempts:
        try:
            with quiet_exporter(), torch.no_grad():
                model = ct.convert(make(), inputs=ins, **kw)
            note = f"batch 1..{FLEXIBLE_BATCH}" if flex else "batch 1"
            if flexible and not flex:
                note += f" (a flexible batch failed: {errors[-1]})"
            return model, f"coremltools torch frontend ({label}); {note}"
        except Exception as e:  # the frontend raises many types for ops it lacks
            errors.append(one_line(e, 120))
    return None, None


def _rename_features(model, base_model, ct):
    """Inputs and outputs take the ONNX names, made identifiers as ML Programs require ('22' -> 't_22')."""
    from .onnx_graph import input_specs, output_specs

    spec = model._spec
    want_in = [mil_name(s.name) for s in input_specs(base_model)]
    want_out = [mil_name(s.name) for s in output_specs(base_model)]
    for feats, want in ((spec.description.input, want_in), (spec.description.output, want_out)):
        for f, new in zip(list(feats), want):
            if f.name != new:
                ct.utils.rename_feature(spec, f.name, new)
    return ct.models.MLModel(spec, weights_dir=model.weights_dir, skip_model_load=True)


def _compress(model, mode: str, ct):
    """Weight compression per mode; returns (model, report details: compressed/skipped weights)."""
    if mode in ("none", "fp16"):
        return model, {}
    from coremltools.optimize import coreml as cto

    from ..converters.torch_export import quiet_exporter

    if mode == "int8":
        op = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel")
    elif mode == "int4":
        op = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int4", granularity="per_block",
                                         block_size=INT4_BLOCK)
    else:
        op = cto.OpPalettizerConfig(mode="kmeans", nbits=int(mode[-1]), granularity="per_tensor")
    before = _weights(model)
    try:
        with quiet_exporter():
            fn = cto.linear_quantize_weights if mode.startswith("int") else cto.palettize_weights
            out = fn(model, cto.OptimizationConfig(global_config=op))
    except Exception as e:
        raise QuantizationError(f"coremltools could not compress the weights ({mode}): {e}") from e
    after = _weights(out)
    compressed = sorted(n for n in before if n not in after)
    skipped = []
    for n in sorted(after):
        shape = after[n]
        if len(shape) < 2 or n not in before:  # biases and scalars are never compressed
            continue
        size = int(np.prod(shape))
        if size < MIN_WEIGHT_ELEMENTS:
            reason = f"{size} elements < {MIN_WEIGHT_ELEMENTS}"
        elif mode == "int4" and len(shape) > 1 and shape[1] % INT4_BLOCK:
            reason = f"input axis {shape[1]} not divisible by block {INT4_BLOCK}"
        else:
            reason = "not a weight coremltools compresses"
        skipped.append({"name": n, "shape": list(shape), "reason": reason})
    return out, {"compressed_weights": len(compressed), "skipped": skipped}


def _weights(model) -> dict[str, tuple[int, ...]]:
    """Float const tensors of rank >= 1 in the saved spec's main function, by name."""
    from coremltools.proto import MIL_pb2

    fn = model._spec.mlProgram.functions["main"]
    out = {}
    for op in fn.block_specializations[fn.opset].operations:
        if op.type != "const":
            continue
        tt = op.outputs[0].type.tensorType
        if tt.dataType in (MIL_pb2.FLOAT16, MIL_pb2.FLOAT32) and tt.rank >= 1:
            out[op.outputs[0].name] = tuple(int(d.constant.size) for d in tt.dimensions)
    return out


def _session(path, ct):
    """Core ML on Apple systems; the numpy MIL executor elsewhere."""
    if platform.system() == "Darwin":
        try:
            from ..runtimes.coreml import CoreMLSession

            return CoreMLSession(path, "CPU_ONLY"), f"coreml (coremltools {ct.__version__})"
        except MissingDependencyError:
            pass
    from .coreml.executor import MILReferenceSession

    return MILReferenceSession(path), "edgelift MIL reference executor (numpy)"


class _OnnxNames(Session):
    """Presents a package whose feature names had to become identifiers under the source's names."""

    def __init__(self, inner: Session, renamed: dict[str, str]) -> None:
        self.inner = inner
        back = {v: k for k, v in renamed.items()}
        self._to = renamed
        self.inputs = [TensorSpec(back.get(s.name, s.name), s.shape, s.dtype) for s in inner.inputs]
        self.outputs = [TensorSpec(back.get(s.name, s.name), s.shape, s.dtype) for s in inner.outputs]
        self._back = back

    def run(self, feeds):
        out = self.inner.run({self._to.get(k, k): v for k, v in feeds.items()})
        return {self._back.get(k, k): v for k, v in out.items()}


def _weight_storage(path) -> dict[str, int]:
    """Bytes of stored weights by dtype (compressed weights count at their packed width)."""
    from .coreml.package import inspect_mlpackage

    return {k: v.bytes for k, v in inspect_mlpackage(path).weight_dtypes.items()}
