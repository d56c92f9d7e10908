"""ONNX target: quantize the fp32 base graph per mode, save it, and load it back in ONNX Runtime."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core.atomic import StagingDir
from ..runtimes.base import Session
from ..runtimes.ort import OrtSession
from . import onnx_graph
from .quantize import QuantInfo, QuantMode, ConvertOptions
from .targets import register_target


@dataclass
class BuiltArtifact:
    path: Path  # final path once committed
    files: list[str]  # staged file names, sidecars first
    session: Session  # the artifact loaded in the runtime users will run it on
    runtime: str  # that runtime and its version, for the report
    info: QuantInfo
    parameters: int
    weight_storage: dict[str, int]  # bytes per storage dtype


@register_target("onnx", suffix=".onnx", repairable=("fp16", "int8", "int4"))
def build_onnx(base_model, mode: QuantMode, opts: ConvertOptions, staging: StagingDir, name: str) -> BuiltArtifact:
    model, info = mode.apply(base_model, opts)
    onnx_graph.check_model(model, f"the {mode.name} artifact")
    file_name = f"{name}.{mode.tag}.onnx"
    files = onnx_graph.save_model(model, staging.file(file_name))
    import onnxruntime

    session = OrtSession(staging.file(file_name))
    w = onnx_graph.describe_weights(model)
    return BuiltArtifact(staging.out_dir / file_name, files, session, f"onnxruntime {onnxruntime.__version__}", info,
                         w.parameters, {k: v.bytes for k, v in w.by_dtype.items()})
