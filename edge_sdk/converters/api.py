"""``edge_sdk.convert``: source -> artifacts per target and quantization mode, with parity reports."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from ..core.atomic import StagingDir, ensure_writable_dir, output_errors, path_size
from ..core.tensors import InputSet, TensorSpec, load_input_set, random_input_set, read_npz
from ..errors import CalibrationError, ConversionError, InvalidOptionError
from ..runtimes.base import fixed_batch, iter_batches, run_all
from ..runtimes.ort import OrtSession
from . import onnx_graph, parity, sources
from .quantize import ConvertOptions, get_mode
from .report import Artifact, ConversionResult, Quantization, SourceInfo, TensorInfo
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
    return [x] if isinstance(x, str) else list(x)


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
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    name: str | None = None,
    block_size: int = 32,
    symmetric: bool = True,
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

    Writes ``<out>/<name>.<mode>.onnx`` per mode and ``<out>/conversion.json``. Every artifact is
    loaded back in ONNX Runtime and compared with the original (the torch model, or the source
    ONNX run in fp32) on ``validation`` data, else ``calibration`` data, else seeded random inputs.
    Nothing is written to ``out`` unless every artifact succeeds.
    """
    if "gguf" in [str(t).lower() for t in _listify(to)]:
        return _convert_gguf(source, _listify(to), _listify(quantize), out, name, progress)
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
    export_time = time.perf_counter() - t0
    in_specs, out_specs = onnx_graph.input_specs(base), onnx_graph.output_specs(base)

    # 3. data, and the reference outputs on it
    report("running the original model")
    int_high = onnx_graph.index_input_bounds(base)
    calib = _input_set(calibration, in_specs, "calibration", int_high)
    valid = _input_set(validation, in_specs, "validation", int_high)
    parity_inputs = valid or (calib if calib is not None and not calib.synthetic else None)
    if parity_inputs is None:
        parity_inputs = random_input_set(in_specs, RANDOM_SAMPLES, seed=1, int_high=int_high)
    ref_outputs, ref_name = _reference_outputs(src, base, parity_inputs)

    opts = ConvertOptions(calib, block_size, symmetric, activation_type, calibration_method, nhwc_io,
                          int8_io, coreml_target, coreml_precision)
    if isinstance(src, sources.TorchSource):
        opts.shared["torch.source"] = src  # Core ML converts torch sources with coremltools' own frontend
    artifacts: list[Artifact] = []
    with StagingDir(out) as staging, output_errors(staging.out_dir):
        for target in targets:
            for mode in modes:
                report(f"{target.name} {mode.name}")
                t1 = time.perf_counter()
                built = target.build(base, mode, opts, staging, src.name)
                elapsed = time.perf_counter() - t1 + export_time
                got = run_all(built.session, parity_inputs)
                par = parity.compare(
                    got, ref_outputs, labels=parity_inputs.labels, reference=ref_name,
                    runtime=built.runtime, inputs=parity_inputs.source,
                    synthetic_inputs=parity_inputs.synthetic,
                )
                warnings = list(built.info.warnings)
                if parity_inputs.synthetic:
                    warnings.append("parity measured on random inputs: pass --validation FILE.npz for real figures")
                artifacts.append(Artifact(
                    path=str(built.path), format=target.name,
                    quantization=Quantization(mode.name, built.info.weights, built.info.activations,
                                              built.info.details),
                    size_bytes=sum(path_size(staging.file(f)) for f in built.files),
                    parameters=built.parameters,
                    conversion_time_s=round(elapsed, 4),
                    parity=par,
                    weight_storage=built.weight_storage,
                    warnings=warnings,
                ))
                staging.commit(*built.files)
        if any(a.parameters != parameters for a in artifacts):
            notes.append("artifact parameter counts differ from the source's where graph optimization "
                         "folded parameters away (e.g. BatchNorm into the preceding Conv)")
        result = ConversionResult(
            SourceInfo(src.kind, src.name, None if getattr(src, "path", None) is None else str(src.path),
                       parameters, [_tinfo(s) for s in in_specs], [_tinfo(s) for s in out_specs],
                       notes=list(getattr(src, "notes", [])) + notes),
            artifacts,
        )
        result.stage(staging)  # conversion.json is published with the artifacts, in the same step
        staging.publish()
    return result


MAX_NAME_BYTES = 128  # artifact names add ".int8-dynamic.onnx.data" and the like; file systems allow 255 bytes


def check_artifact_name(name: str) -> None:
    """The base name artifacts get (from --name or the source's file name) must fit a file name."""
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES or "/" in name or name in ("", ".", ".."):
        raise InvalidOptionError(f"the artifacts' base name '{name[:40]}...' ({len(name)} characters, from the source's "
                                 f"file name) cannot name a file: pass --name with at most {MAX_NAME_BYTES} characters")


def _convert_gguf(source, to: list[str], quantize: list[str], out, name, progress) -> ConversionResult:
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

    return convert_gguf(source, quantize=quantize, out=out, name=name, progress=on_step)


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


def _input_set(arg, specs: list[TensorSpec], what: str, int_high: dict[str, int]) -> InputSet | None:
    if arg is None:
        return None
    if isinstance(arg, InputSet):
        from ..core.tensors import validate_inputs

        arrays, labels = validate_inputs(arg.arrays, arg.labels, specs, what)
        return InputSet(arrays, labels, arg.source, arg.synthetic, list(arg.notes))
    if str(arg) == RANDOM:
        if what != "calibration":
            raise CalibrationError("'random' is accepted for calibration only; give a validation .npz")
        return random_input_set(specs, RANDOM_SAMPLES, seed=0, int_high=int_high)
    return load_input_set(arg, specs)


def _reference_outputs(src, base, data: InputSet) -> tuple[dict[str, np.ndarray], str]:
    if isinstance(src, sources.OnnxSource):
        return OrtSession(base.SerializeToString()).run_all(data), "onnxruntime (source ONNX, fp32)"
    import torch

    from .torch_export import one_line

    names = [s.name for s in onnx_graph.output_specs(base)]
    chunks: list[list[np.ndarray]] = [[] for _ in names]
    with torch.no_grad():
        for feeds, valid in iter_batches(data, fixed_batch(onnx_graph.input_specs(base))):
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
