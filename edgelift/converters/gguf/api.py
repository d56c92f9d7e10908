"""``edgelift.convert(..., to="gguf")``: every requested GGUF type written, checked, reported."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterable

from ...core.atomic import StagingDir, ensure_writable_dir, output_errors, path_size
from ...core.progress import Steps
from ...errors import InvalidOptionError, ParityError
from ..report import Artifact, ConversionResult, Quantization, SourceInfo, TensorInfo
from . import check, mixes
from .convert import bits_per_weight, open_source, type_histogram, write_gguf

DEFAULT_TYPES = {"none": "F32", "fp16": "F16", "int8": "Q8_0", "int4": "Q4_K_M"}


def convert_gguf(source: str | Path, *, quantize: Iterable[str], out: str | Path, name: str | None = None,
                 check_with_llama: bool = True, progress: Callable[[str, int, int], None] | None = None,
                 keep_failed: bool = False) -> ConversionResult:
    """Convert a Hugging Face checkpoint directory or a .gguf file to each GGUF type in ``quantize``.

    Types: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K_S, Q4_K_M, Q5_K_S, Q5_K_M, Q6_K, and the
    pure Q4_K / Q5_K (``none``/``fp16``/``int8``/``int4`` mean F32/F16/Q8_0/Q4_K_M). Each file is loaded by
    llama.cpp, compared with the source and held to its type's gate (``check.gate``): a file below it is not
    published (``keep_failed`` keeps it, marked failed) and :class:`ParityError` follows once the others are.
    """
    if isinstance(source, (str, Path)) is False:
        raise InvalidOptionError("--to gguf converts a Hugging Face checkpoint directory or a .gguf file")
    types = [mixes.file_type(DEFAULT_TYPES.get(q.lower(), q)) for q in quantize]
    types = list({t.name: t for t in types}.values())
    ensure_writable_dir(out)
    src = open_source(source, name)
    from ..api import check_artifact_name

    check_artifact_name(src.name)
    step = Steps(len(types) * (len(src.tensors) + 1) + 1, progress)

    ref = None
    if check_with_llama:
        step("reference outputs")
        ref = (check.reference_from_checkpoint(src.checkpoint, src.arch) if src.kind == "hf"
               else check.reference_from_gguf(src.path, src.arch))
    artifacts: list[Artifact] = []
    failed: list[Artifact] = []
    with StagingDir(out) as staging, output_errors(staging.out_dir):
        written = []
        for ft in types:
            file_name = f"{src.name}.{ft.name}.gguf"
            wf = write_gguf(src, ft, staging.file(file_name), tensor_done=lambda n, ft=ft: step(f"{ft.name} {n}"))
            warnings = [f"{len(wf.reasons)} tensor(s) differ from {ft.default}: "
                        + "; ".join(f"{k}: {v}" for k, v in list(wf.reasons.items())[:3])
                        + (" ..." if len(wf.reasons) > 3 else "")] if wf.reasons else []
            if src.requantized:
                warnings.append("re-quantized from an already quantized GGUF: errors add up; convert from the "
                                "original checkpoint where you can")
            parity, extra, verdict = (None, {}, None)
            t_check = time.perf_counter()
            if ref is not None:
                step(f"{ft.name} llama.cpp check")
                parity, extra = check.check_artifact(staging.file(file_name), src.arch, ref)
                verdict = check.gate(parity, ft.name)
                if extra.get("tokenizer_agreement", 1.0) < 1.0:
                    warnings.append("llama.cpp tokenizes the check texts differently from the Hugging Face tokenizer")
            details = {"file_type": ft.name, "general.file_type": ft.ftype, "tensor_types": type_histogram(wf.tensor_types),
                       "bits_per_weight": round(bits_per_weight(src, wf.tensor_types), 4),
                       "type_changes": wf.reasons, "write_seconds": round(wf.seconds, 3),
                       "check_seconds": round(time.perf_counter() - t_check, 3), **extra}
            passed = verdict is None or verdict.passed
            artifact = Artifact(
                path=str(staging.out_dir / file_name), format="gguf",
                quantization=Quantization(ft.name, ", ".join(f"{k} x{v}" for k, v in details["tensor_types"].items()),
                                          "llama.cpp compute", details),
                size_bytes=path_size(staging.file(file_name)), parameters=src.parameters,
                conversion_time_s=round(wf.seconds, 4), parity=parity or _unchecked(), warnings=warnings,
                status="passed" if passed else "failed", gate=verdict.to_dict() if verdict else {})
            if passed or keep_failed:
                written.append(file_name)
            else:
                staging.discard(file_name)
                artifact.path = ""
                artifact.warnings.append("not written: below its parity gate (pass --keep-failed to keep it)")
            if not passed:
                failed.append(artifact)
            artifacts.append(artifact)
        staging.commit(*written)
        result = ConversionResult(
            SourceInfo(src.kind, src.name, str(src.path), src.parameters,
                       [TensorInfo("tokens", [None], "int32")],
                       [TensorInfo("embedding" if src.arch == "bert" else "logits", [None, None], "float32")],
                       notes=[f"architecture {src.arch}, {src.n_layer} blocks, {len(src.tensors)} tensors"]),
            artifacts)
        if written:  # else --out stays untouched; the report travels with the ParityError
            result.stage(staging)  # conversion.json is published with the artifacts, in the same step
            staging.publish()
    if failed:
        raise ParityError("; ".join(f"gguf {a.quantization.mode} fails its parity gate ({', '.join(a.gate['failures'])})"
                                    for a in failed)
                          + ("" if keep_failed else " — not written (--keep-failed keeps failed artifacts)"), result)
    return result


def _unchecked():
    from ..parity import OutputParity, Parity

    return Parity("not checked", "none", "none", True, 1, [OutputParity("logits", 0.0, 0.0, 1.0, None)])
