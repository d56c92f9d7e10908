"""``edge inspect``: what a model file holds — signature, ops, parameters, weight storage, size."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..core.formats import ModelFormat, detect_format
from ..core.hub_cache import resolve_model_path
from ..core.tensors import TensorSpec
from ..errors import ModelFormatError
from . import onnx_graph


@dataclass
class InspectReport:
    path: str
    format: str
    size_bytes: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    op_histogram: dict[str, int]
    parameters: int
    weight_dtypes: dict[str, onnx_graph.DtypeStats]
    quantization: list[str]
    metadata: dict[str, str] = field(default_factory=dict)


def inspect(path: str | Path) -> InspectReport:
    """Describe the model at ``path`` (ONNX, .pt2, .tflite, .mlpackage); raises ModelFormatError for anything else."""
    p = resolve_model_path(path)  # a Hugging Face id already in the local cache: its model file
    fmt = detect_format(p)
    if fmt is ModelFormat.ONNX:
        return _inspect_onnx(p)
    if fmt is ModelFormat.PT2:
        return _inspect_pt2(p)
    if fmt is ModelFormat.TFLITE:
        from .tflite.reader import inspect_tflite

        return inspect_tflite(p)
    if fmt is ModelFormat.COREML and p.is_dir():
        from .coreml.package import inspect_mlpackage

        return inspect_mlpackage(p)
    if fmt is ModelFormat.GGUF:
        return _inspect_gguf(p)
    raise ModelFormatError(f"{p}: inspecting {fmt.value} files is not supported yet; pass an .onnx, .pt2, .tflite, "
                           ".mlpackage or .gguf")


_GGUF_KEYS = ("general.name", "general.file_type", "tokenizer.ggml.model", "tokenizer.ggml.pre")


def _inspect_gguf(p: Path) -> InspectReport:
    """A GGUF's header (our bounded reader): architecture, hyperparameters, tensor types; no weights read."""
    from ..core.gguf import GGML_TYPES, read_gguf_info

    info = read_gguf_info(p)
    arch = info.architecture or "?"
    stats: dict[str, onnx_graph.DtypeStats] = {}
    params = 0
    for t in info.tensors:
        n = 1
        for d in t.shape:
            n *= d
        d = stats.setdefault(t.type_name, onnx_graph.DtypeStats())
        d.tensors, d.elements, d.bytes = d.tensors + 1, d.elements + n, d.bytes + t.nbytes
        params += n
    meta = {"architecture": arch, "gguf_version": str(info.version)}
    meta.update({k: str(info.metadata[k]) for k in (*_GGUF_KEYS, f"{arch}.block_count", f"{arch}.embedding_length",
                                                    f"{arch}.context_length") if k in info.metadata})
    quantized = sorted({t.type_name for t in info.tensors if GGML_TYPES.get(t.ggml_type, ("", 1, 0))[1] > 1})
    out = "embedding" if arch in ("bert", "nomic-bert") else "logits"
    return InspectReport(str(p), "gguf", p.stat().st_size, [TensorSpec("tokens", (None,), "int32")],
                         [TensorSpec(out, (None, None), "float32")], {}, params, stats,
                         [f"{q} blocks" for q in quantized], meta)


def _inspect_onnx(p: Path) -> InspectReport:
    """Read with the project's own protobuf codec: works on a device's base install (no onnx package)."""
    from ..core.onnx_summary import summarize

    s = summarize(p.read_bytes())
    return InspectReport(str(p), "onnx", onnx_graph.file_size(p), s.inputs, s.outputs, dict(s.op_histogram.most_common()),
                         s.weights.parameters, s.weights.by_dtype, s.weights.quantized, s.metadata)


def _inspect_pt2(p: Path) -> InspectReport:
    from collections import Counter

    from .sources import load_pt2

    src = load_pt2(p)
    ep = src.exported
    hist = Counter(str(n.target).split(".")[-2] if "." in str(n.target) else str(n.target)
                   for n in ep.graph.nodes if n.op == "call_function")
    user = set(ep.graph_signature.user_inputs)
    inputs = []
    for n in ep.graph.nodes:
        if n.op == "placeholder" and n.name in user:
            v = n.meta["val"]
            shape = tuple(int(d) if str(d).isdigit() else str(d) for d in v.shape)
            inputs.append(TensorSpec(n.name, shape, str(v.dtype).replace("torch.", "")))
    outputs = []
    out_node = next(n for n in ep.graph.nodes if n.op == "output")
    for i, arg in enumerate(out_node.args[0] if isinstance(out_node.args[0], (list, tuple)) else [out_node.args[0]]):
        v = getattr(arg, "meta", {}).get("val")
        if v is not None and hasattr(v, "shape"):
            shape = tuple(int(d) if str(d).isdigit() else str(d) for d in v.shape)
            outputs.append(TensorSpec(getattr(arg, "name", f"output_{i}"), shape, str(v.dtype).replace("torch.", "")))
    stats: dict[str, onnx_graph.DtypeStats] = {}
    for t in ep.state_dict.values():
        d = stats.setdefault(str(t.dtype).replace("torch.", ""), onnx_graph.DtypeStats())
        d.tensors += 1
        d.elements += t.numel()
        d.bytes += t.numel() * t.element_size()
    return InspectReport(str(p), "pt2", p.stat().st_size, inputs, outputs, dict(hist.most_common()),
                         src.parameter_count(), stats, [], {"program": "torch.export ExportedProgram"})
