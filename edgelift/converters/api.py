"""``edgelift.convert``: source -> artifacts per target and quantization mode, with parity reports."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from ..core.atomic import StagingDir, ensure_writable_dir, output_errors, path_size
from ..core.tensors import InputSet, TensorSpec, random_input_set, read_npz
from ..errors import CalibrationError, ConversionError, InvalidOptionError, ParityError
from ..runtimes.base import fixed_batch, iter_batches, run_all
from ..runtimes.ort import OrtSession
from . import onnx_graph, parity, sources
from .quantize import ConvertOptions, get_mode
from .report import Artifact, ConversionResult, Quantization, SourceInfo, TensorInfo
from .signature import resolve_signature
from .targets import get_target

RANDOM = "random"
_SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
RANDOM_SAMPLES = 32  # synthetic samples for calibration / parity when no data is given


@dataclass
class ProgressEvent:
    step: int
    total: int
    description: str


ProgressCallback = Callable[[ProgressEvent], None]


def _listify(x: str | Iterable[str]) -> list[str]:
    """``"int8,int4"``, ``["int8", "int4"]`` or ``["int8,int4"]`` -> ``["int8", "int4"]`` (comma lists as
    llama-bench and optimum take them)."""
    items = [x] if isinstance(x, str) else list(x)
    return [p.strip() for item in items for p in (item.split(",") if isinstance(item, str) else [item])
            if not isinstance(p, str) or p.strip()]


def convert(
    source: Any,
    *,
    to: str | Iterable[str] = "onnx",
    quantize: str | Iterable[str] = "none",
    out: str | Path = "edge-out",
    example_inputs: tuple | None = None,
    calibration: str | Path | InputSet | None = None,
    validation: str | Path | InputSet | None = None,
    weights: str | Path | None = None,
    input_shapes: dict[str, tuple[int | None, ...]] | None = None,
    batch_axis: dict[str, int | None] | None = None,
    input_ranges: dict[str, tuple[float, float]] | None = None,
    min_cosine: float | None = None,
    max_rel_l2: float | None = None,
    keep_failed: bool = False,
    repair: bool = True,
    name: str | None = None,
    block_size: int = 32,
    symmetric: bool = True,
    accuracy_level: int | None = None,
    attention: str = "auto",
    activation_type: str = "uint8",
    calibration_method: str = "minmax",
    dynamic_batch: bool = True,
    opset: int | None = None,
    nhwc_io: bool = False,
    int8_io: bool = False,
    coreml_target: str = "iOS16",
    coreml_precision: str = "fp16",
    exporter: str = "auto",
    progress: ProgressCallback | None = None,
) -> ConversionResult:
    """Convert ``source`` to each format in ``to`` and each mode in ``quantize``.

    Writes ``<out>/<name>.<mode>.<suffix>`` per target and mode and ``<out>/conversion.json``. Every artifact
    is loaded back in the runtime users run it on and compared with the original (the torch model, or the
    source ONNX run in fp32) on ``validation`` data, else real ``calibration`` data, else seeded random
    inputs, and held to its mode's parity gate (``parity.MIN_COSINE``; ``min_cosine``/``max_rel_l2``
    override it). An artifact below its gate is located layer by layer and, where the format can keep
    nodes in float, repaired with mixed precision (``repair``); if it still fails it is left out (kept,
    marked failed, with ``keep_failed``) and :class:`ParityError` is raised once the rest is published.

    Input shapes are settled first (``converters/signature.py``): ``input_shapes`` (``None`` in a shape
    keeps that dim dynamic), then the data's shapes; a symbolic dim nothing sizes is refused.
    Nothing is written to ``out`` unless every artifact is built.
    """
    if isinstance(source, str) and not source.endswith((".pt2", ".onnx", ".gguf")):
        from ..core.hub_cache import looks_like_repo_id, resolve_repo_id

        if looks_like_repo_id(source):  # a Hugging Face id: from the local cache, never downloaded
            repo = source.split("@")[0]
            source, name = resolve_repo_id(source), name or repo.split("/")[1]
    if "gguf" in [str(t).lower() for t in _listify(to)]:
        return _convert_gguf(source, _listify(to), _listify(quantize), out, name, keep_failed, progress)
    from .llm_onnx import is_decoder_checkpoint

    if isinstance(source, (str, Path)) and is_decoder_checkpoint(source):
        return _convert_llm(source, _listify(to), _listify(quantize), out, name, block_size, symmetric, accuracy_level,
                            attention, keep_failed, progress)
    targets = list({t.name: t for t in map(get_target, _listify(to))}.values())
    modes = list({m.name: m for m in map(get_mode, _listify(quantize))}.values())
    if not modes:
        raise InvalidOptionError("no quantization mode given; use e.g. quantize='none'")
    if name is not None and not _SAFE_NAME.fullmatch(name):
        raise InvalidOptionError(f"--name '{name}' must be a plain file name (letters, digits, '.', '_', '-')")
    if isinstance(calibration, str) and calibration != RANDOM and not calibration.endswith(".npz") \
            and not Path(calibration).exists():
        raise CalibrationError(f"calibration file {calibration} does not exist; pass FILE.npz or 'random'")
    ensure_writable_dir(out)

    total = 3 + len(targets) * len(modes)
    step = 0

    def report(desc: str) -> None:
        nonlocal step
        step += 1
        if progress:
            progress(ProgressEvent(step, total, desc))

    # 1. the source
    report("loading source")
    if example_inputs is None and isinstance(source, (str, Path)) and not Path(str(source)).exists():
        example_inputs = _factory_example_inputs(input_shapes, calibration)
    src = sources.resolve_source(source, example_inputs=example_inputs, weights=weights, name=name)
    check_artifact_name(src.name)

    # 2. the fp32 ONNX base graph every mode starts from
    report("exporting to ONNX" if isinstance(src, sources.TorchSource) else "checking ONNX source")
    t0 = time.perf_counter()
    notes: list[str] = []
    if isinstance(src, sources.TorchSource):
        from .torch_export import export_onnx

        base, notes = export_onnx(src, dynamic_batch=dynamic_batch, opset=opset, exporter=exporter,
                                  fixed_batch_targets=all(t.fixed_batch for t in targets))
        parameters = src.parameter_count()
    else:
        base = src.model
        parameters = onnx_graph.describe_weights(base).parameters
    onnx_graph.name_nodes(base)
    export_time = time.perf_counter() - t0
    declared, out_specs = onnx_graph.input_specs(base), onnx_graph.output_specs(base)

    # 3. every input's shape, batch axis and range, settled before anything runs
    static = any(t.fixed_batch for t in targets)
    calib_raw, valid_raw = _raw_data(calibration), _raw_data(validation)
    sig = resolve_signature(
        declared, input_shapes=None if isinstance(src, sources.TorchSource) else input_shapes,
        batch_axis=batch_axis, input_ranges=input_ranges,
        data=[(origin, arrays) for origin, arrays, _ in (calib_raw, valid_raw) if arrays is not None])
    if sig.pinned():
        from .signature import pin_input_dims

        base = _copy(base)
        pin_input_dims(base, sig.pinned())
        notes.append("input shapes fixed by --input-shape: " + ", ".join(
            f"{k}={list(v)}" for k, v in sig.pinned().items()))
    in_specs = sig.data_specs(static)
    int_high = onnx_graph.index_input_bounds(base)
    calib = _input_set(calibration, calib_raw, in_specs, "calibration", int_high, sig)
    valid = _input_set(validation, valid_raw, in_specs, "validation", int_high, sig)
    opts = ConvertOptions(calib, block_size, symmetric, activation_type, calibration_method, nhwc_io,
                          int8_io, coreml_target, coreml_precision)
    if isinstance(src, sources.TorchSource):
        opts.shared["torch.source"] = src  # Core ML converts torch sources with coremltools' own frontend
    if static:
        from .graph import shared_graph

        lowered = [t for t in targets if t.fixed_batch]
        rigid = next((t for t in lowered if not t.dynamic_dims), None)
        opts.shared["lowering.shapes"] = sig.static_shapes((rigid or lowered[0]).name, keep_dynamic=rigid is None)
        if rigid is None and sig.dynamic_axes():
            opts.shared["lowering.dynamic"] = sig.dynamic_axes()
        for target in targets:  # every node a target cannot express, listed before any reference run
            if target.precheck and not (target.name == "coreml" and isinstance(src, sources.TorchSource)):
                target.precheck(shared_graph(base, opts.shared))

    # 4. the reference outputs
    report("running the original model")
    parity_inputs = valid or (calib if calib is not None and not calib.synthetic else None)
    if parity_inputs is None:
        parity_inputs = random_input_set(in_specs, RANDOM_SAMPLES, seed=1, int_high=int_high,
                                         unbatched=sig.unbatched, ranges=sig.ranges)
    opts.shared["parity.inputs"] = parity_inputs
    ref_outputs, ref_name = _reference_outputs(src, base, parity_inputs)

    def check(built, mode) -> tuple[parity.Parity, parity.Gate]:
        got = run_all(built.session, parity_inputs)
        par = parity.compare(got, ref_outputs, labels=parity_inputs.labels, reference=ref_name,
                             runtime=built.runtime, inputs=parity_inputs.source,
                             synthetic_inputs=parity_inputs.synthetic)
        return par, parity.gate(par, mode.name, min_cosine=min_cosine, max_rel_l2=max_rel_l2)

    artifacts: list[Artifact] = []
    failed: list[Artifact] = []
    with StagingDir(out) as staging, output_errors(staging.out_dir):
        for target in targets:
            for mode in modes:
                report(f"{target.name} {mode.name}")
                t1 = time.perf_counter()
                built = target.build(base, mode, opts, staging, src.name)
                par, verdict = check(built, mode)
                located: list[dict] = []
                if not verdict.passed:
                    built, par, verdict, located = _locate_and_repair(
                        target, mode, opts, staging, src.name, base, built, par, verdict, check,
                        parity_inputs, repair, report)
                elapsed = time.perf_counter() - t1 + export_time
                warnings = list(built.info.warnings)
                if parity_inputs.synthetic:
                    warnings.append("parity measured on random inputs: pass --validation FILE.npz for real figures")
                artifact = Artifact(
                    path=str(built.path), format=target.name,
                    quantization=Quantization(mode.name, built.info.weights, built.info.activations,
                                              built.info.details),
                    size_bytes=sum(path_size(staging.file(f)) for f in built.files),
                    parameters=built.parameters,
                    conversion_time_s=round(elapsed, 4),
                    parity=par,
                    weight_storage=built.weight_storage,
                    warnings=warnings,
                    status="passed" if verdict.passed else "failed",
                    gate=verdict.to_dict(),
                    float_nodes=sorted(built.info.details.get("fp32_nodes", [])),
                    built_shapes=_built_shapes(target, sig, opts),
                    layer_errors=located,
                )
                built.session.close()
                if verdict.passed or keep_failed:
                    staging.commit(*built.files)
                    artifacts.append(artifact)
                else:
                    staging.discard(*built.files)
                    artifact.path = ""
                    artifact.warnings.append("not written: below its parity gate (pass --keep-failed to keep it)")
                    artifacts.append(artifact)
                if not verdict.passed:
                    failed.append(artifact)
        if any(a.parameters != parameters for a in artifacts if a.path):
            notes.append("artifact parameter counts differ from the source's where graph optimization "
                         "folded parameters away (e.g. BatchNorm into the preceding Conv)")
        result = ConversionResult(
            SourceInfo(src.kind, src.name, None if getattr(src, "path", None) is None else str(src.path),
                       parameters, [_tinfo(s) for s in declared], [_tinfo(s) for s in out_specs],
                       notes=list(getattr(src, "notes", [])) + notes, input_shapes=sig.describe()),
            artifacts,
        )
        if any(a.status == "passed" or keep_failed for a in artifacts):
            result.stage(staging)  # conversion.json is published with the artifacts, in the same step
            staging.publish()
        # else nothing passed: --out stays untouched; the report travels with the ParityError
    if failed:
        raise ParityError("; ".join(_failure_line(a) for a in failed)
                          + ("" if keep_failed else " — not written (--keep-failed keeps failed artifacts)")
                          + ("" if result.report_path else f"; {out} untouched"), result)
    return result


def _failure_line(a: Artifact) -> str:
    what = f"{a.format} {a.mode}"
    where = ""
    if a.layer_errors:
        first = a.layer_errors[0]
        where = f", error first jumps at {first['node']} ({first['op_type']}, rel-L2 {first['rel_l2']:.3g})"
    return f"{what} fails its parity gate ({', '.join(a.gate['failures'])}{where})"


def _locate_and_repair(target, mode, opts, staging, name, base, built, par, verdict, check, data, repair, report):
    """Layer-wise errors of a failed artifact; then, where the format can keep nodes in float, the greedy
    mixed-precision repair. Returns the best (built, parity, gate) and the first layers where error jumps."""
    from dataclasses import replace

    from . import repair as rp

    try:
        reference, errors, eligible = _layer_errors(target, mode, base, built, opts, data, staging)
    except Exception as e:  # noqa: BLE001 - localization is a diagnosis: its failure must not hide the verdict
        built.info.warnings.append(f"layer-wise comparison failed ({type(e).__name__}: {' '.join(str(e).split())[:100]})")
        return built, par, verdict, []
    located = [e.to_dict() for e in rp.first_breaks(errors)]
    if not repair or mode.name not in target.repairable:
        return built, par, verdict, located
    plans = rp.repair_plans(errors, eligible, reference, mode.name)
    first_cos = par.primary.cosine_similarity
    best = (first_cos, frozenset())
    plan: frozenset[str] = frozenset()
    for plan in plans:
        report(f"{target.name} {mode.name}: repairing ({len(plan)} node(s) in float)")
        built.session.close()
        built = target.build(base, mode, replace(opts, float_nodes=plan), staging, name)
        par, verdict = check(built, mode)
        if par.primary.cosine_similarity > best[0]:
            best = (par.primary.cosine_similarity, plan)
        if verdict.passed:
            break
    if plans and not verdict.passed and plan != best[1]:  # none passed: hand back the closest
        built.session.close()
        built = target.build(base, mode, replace(opts, float_nodes=best[1]), staging, name)
        par, verdict = check(built, mode)
    if plans:
        kept = sorted(best[1] if not verdict.passed else plan)
        built.info.details["repair"] = {"cosine_before": first_cos, "cosine_after": par.primary.cosine_similarity,
                                        "attempts": len(plans), "passed": verdict.passed, "float_nodes": kept}
        built.info.warnings.append(
            f"mixed precision: {len(kept)} node(s) kept in float {'lifted' if verdict.passed else 'moved'} the "
            f"primary output's cosine from {first_cos:.4f} to {par.primary.cosine_similarity:.4f}"
            + ("" if verdict.passed else f" in the best of {len(plans)} attempts, still below the gate"))
    return built, par, verdict, located


def _layer_errors(target, mode, base, built, opts, data, staging):
    """(reference graph, per-layer errors in graph order, nodes a repair may keep in float) for ``built``."""
    from . import repair as rp

    if target.name == "onnx":
        import onnx

        art = onnx.load(str(staging.file(built.files[-1])))
        quantized_inputs = {o for n in art.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        eligible = {n.name for n in art.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
                    and (mode.name != "int8" or any(i in quantized_inputs for i in n.input))}
        return base, rp.layer_errors(base, rp.onnx_artifact_tensors(art, data), data), eligible
    if target.name == "tflite":
        from .graph import shared_graph
        from .tflite.lower import INT8_OPS

        graph = shared_graph(base, opts.shared)
        eligible = {n.name for n in graph.nodes if n.op_type in INT8_OPS}
        tensors = rp.tflite_artifact_tensors(staging.file(built.files[-1]), data)
        return graph.model, rp.layer_errors(graph.model, tensors, data), eligible
    if target.name == "coreml" and built.info.details.get("frontend", "").startswith("edgelift"):
        from .coreml.lower import mil_name
        from .graph import shared_graph

        graph = shared_graph(base, opts.shared)
        # each node's last MIL op carries its ONNX output's name (made an identifier; coremltools' fp16 pass
        # appends "_cast_fp16" to the ops it converts)
        names = {mil_name(o) + suffix: o for n in graph.model.graph.node for o in n.output if o
                 for suffix in ("", "_cast_fp16")}
        tensors = rp.coreml_artifact_tensors(staging.file(built.files[-1]), data, names)
        return graph.model, rp.layer_errors(graph.model, tensors, data), {n.name for n in graph.nodes}
    return base, [], set()


def _built_shapes(target, sig, opts) -> dict[str, list]:
    if target.fixed_batch and "lowering.shapes" in opts.shared:
        dynamic = opts.shared.get("lowering.dynamic", {}) if target.dynamic_dims else {}
        return {k: ["?" if i in dynamic.get(k, ()) else d for i, d in enumerate(v)]
                for k, v in opts.shared["lowering.shapes"].items()}
    return sig.describe()


def _copy(model):
    out = type(model)()
    out.CopyFrom(model)
    return out


MAX_NAME_BYTES = 128  # artifact names add ".int8-dynamic.onnx.data" and the like; file systems allow 255 bytes


def check_artifact_name(name: str) -> None:
    """The base name artifacts get (from --name or the source's file name) must fit a file name."""
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES or "/" in name or name in ("", ".", ".."):
        raise InvalidOptionError(f"the artifacts' base name '{name[:40]}...' ({len(name)} characters, from the source's "
                                 f"file name) cannot name a file: pass --name with at most {MAX_NAME_BYTES} characters")


def _convert_llm(source, to: list[str], quantize: list[str], out, name, block_size, symmetric, accuracy_level,
                 attention, keep_failed, progress) -> ConversionResult:
    """Decoder checkpoints become ONNX graphs with a key-value cache, built by the project (``llm_onnx``)."""
    other = sorted({t.lower() for t in to} - {"onnx"})
    if other:
        raise InvalidOptionError(f"{source} is a decoder language model: it converts to onnx (a graph with a key-value "
                                 f"cache, run by edgelift.load(...).generate()) or gguf, not {', '.join(other)}")
    from .llm_onnx import convert_llm_onnx

    def on_step(desc: str, done: int, total: int) -> None:
        if progress:
            progress(ProgressEvent(done, total, desc))

    return convert_llm_onnx(source, quantize=quantize, out=out, name=name, block_size=block_size, symmetric=symmetric,
                            accuracy_level=accuracy_level, attention=attention, keep_failed=keep_failed,
                            progress=on_step)


def _convert_gguf(source, to: list[str], quantize: list[str], out, name, keep_failed, progress) -> ConversionResult:
    """GGUF is written from checkpoints directly (no ONNX graph in between): its own pipeline."""
    if len(to) > 1:
        raise InvalidOptionError("--to gguf converts Hugging Face checkpoints and GGUF files; give it alone")
    if not isinstance(source, (str, Path)):
        raise InvalidOptionError("--to gguf needs a Hugging Face checkpoint directory or a .gguf file")
    if name is not None and not _SAFE_NAME.fullmatch(name):
        raise InvalidOptionError(f"--name '{name}' must be a plain file name (letters, digits, '.', '_', '-')")
    from .gguf.api import convert_gguf

    def on_step(desc: str, step: int, total: int) -> None:
        if progress:
            progress(ProgressEvent(step, total, desc))

    return convert_gguf(source, quantize=quantize, out=out, name=name, progress=on_step, keep_failed=keep_failed)


def _tinfo(s: TensorSpec) -> TensorInfo:
    return TensorInfo(s.name, list(s.shape), s.dtype)


def _factory_example_inputs(input_shapes, calibration) -> tuple | None:
    if input_shapes:
        return sources.example_inputs_from_shapes(input_shapes)
    if isinstance(calibration, (str, Path)) and str(calibration) != RANDOM:
        arrays, _ = read_npz(calibration)
        return sources.example_inputs_from_arrays(arrays)
    if isinstance(calibration, InputSet):
        return sources.example_inputs_from_arrays(calibration.arrays)
    return None


def _raw_data(arg) -> tuple[str, dict[str, np.ndarray] | None, np.ndarray | None]:
    """(origin, arrays, labels) of a data argument read once, before shapes are settled."""
    if arg is None or (isinstance(arg, str) and arg == RANDOM):
        return "", None, None
    if isinstance(arg, InputSet):
        return arg.source, arg.arrays, arg.labels
    arrays, labels = read_npz(arg)
    return str(arg), arrays, labels


def _input_set(arg, raw, specs: list[TensorSpec], what: str, int_high: dict[str, int], sig) -> InputSet | None:
    if arg is None:
        return None
    if str(arg) == RANDOM and not isinstance(arg, InputSet):
        if what != "calibration":
            raise CalibrationError("'random' is accepted for calibration only; give a validation .npz")
        return random_input_set(specs, RANDOM_SAMPLES, seed=0, int_high=int_high, unbatched=sig.unbatched,
                                ranges=sig.ranges)
    from ..core.tensors import validate_inputs

    origin, arrays, labels = raw
    arrays, labels = validate_inputs(arrays, labels, specs, origin, sig.unbatched)
    synthetic = arg.synthetic if isinstance(arg, InputSet) else False
    notes = list(arg.notes) if isinstance(arg, InputSet) else []
    return InputSet(arrays, labels, origin, synthetic, notes, sig.unbatched)


def _reference_outputs(src, base, data: InputSet) -> tuple[dict[str, np.ndarray], str]:
    if isinstance(src, sources.OnnxSource):
        return OrtSession(base.SerializeToString()).run_all(data), "onnxruntime (source ONNX, fp32)"
    import torch

    from .torch_export import one_line

    names = [s.name for s in onnx_graph.output_specs(base)]
    chunks: list[list[np.ndarray]] = [[] for _ in names]
    with torch.no_grad():
        for feeds, valid in iter_batches(data, fixed_batch(onnx_graph.input_specs(base), data.unbatched)):
            try:
                outs = src.module(*(torch.from_numpy(v) for v in feeds.values()))
            except Exception as e:
                raise ConversionError(f"running the original torch model failed: {one_line(e)}") from e
            flat = _flatten(outs)
            if len(flat) != len(names):
                raise ConversionError(
                    f"the torch model returned {len(flat)} outputs but its ONNX export has {len(names)}"
                )
            for i, o in enumerate(flat):
                chunks[i].append(o.detach().cpu().numpy()[:valid])
    return {n: np.concatenate(c, axis=0) for n, c in zip(names, chunks)}, "torch"


def _flatten(x) -> list:
    import torch

    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, dict):
        return [t for v in x.values() for t in _flatten(v)]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in _flatten(v)]
    return []
