"""``edge convert CHECKPOINT --to onnx`` for decoder language models: graph, weights, sidecar, parity.

Each mode's graph is built by the project (``decoder.py``), its weights streamed from safetensors into
``<name>.<mode>.onnx.data``, checked by the ONNX checker, loaded by ONNX Runtime through edgelift's own
decoder backend and compared with transformers (``parity.py``). An artifact below its gate is not
published (``keep_failed`` keeps it, marked failed) and :class:`ParityError` follows; nothing reaches
``out`` until every artifact is built.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable, Iterable

from ...core.atomic import StagingDir, ensure_writable_dir, output_errors, path_size
from ...core.progress import Steps
from ...errors import ParityError, QuantizationError
from ..gguf.checkpoint import read_checkpoint
from ..quantize import get_mode
from ..report import Artifact, ConversionResult, Quantization, SourceInfo, TensorInfo
from . import parity
from .decoder import build_decoder
from .encodings import ENCODINGS
from .spec import DecoderSpec, decoder_spec
from .writer import GraphWriter

OPSET = 17
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                   "tokenizer.model", "chat_template.jinja")


def is_decoder_checkpoint(path) -> bool:
    """A Hugging Face directory whose config names a causal language model."""
    p = Path(str(path))
    if not (p.is_dir() and (p / "config.json").is_file()):
        return False
    try:
        cfg = json.loads((p / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return any(str(a).endswith("ForCausalLM") for a in cfg.get("architectures") or [])


def convert_llm_onnx(source: str | Path, *, quantize: Iterable[str], out: str | Path, name: str | None = None,
                     block_size: int = 32, symmetric: bool = True, accuracy_level: int | None = None, keep_failed: bool = False,
                     attention: str = "auto", threads: int | None = None, progress: Callable[[str, int, int], None] | None = None,
                     ) -> ConversionResult:
    """Convert a Llama/Qwen2 checkpoint to one ONNX decoder graph per mode (none, fp16, int8-dynamic, int4).

    ``attention``: "contrib" (ONNX Runtime's GroupQueryAttention and SkipSimplifiedLayerNormalization),
    "standard" (standard ONNX operators only, for runtimes and execution providers without them), or "auto"
    (contrib where this ONNX Runtime has their CPU kernels). ``accuracy_level``: MatMulNBits' compute type, 0
    (fp32) to 4 (int8 activations); None: 4, and an artifact that misses its gate with int8 compute is checked
    again computing in fp32 (level 0) and kept so when that passes — int8 compute's accuracy depends on the
    CPU's kernels (SmolLM2's int8-dynamic: top-1 0.98 on an AVX512-VNNI CPU, 0.94 on an AVX2 one)."""
    ops = resolve_attention(attention)
    ckpt = read_checkpoint(source)
    spec = decoder_spec(ckpt.config)
    modes = list({m.name: m for m in map(get_mode, quantize)}.values())
    for m in modes:
        if m.name not in ENCODINGS:
            raise QuantizationError(f"-q {m.name} does not apply to language-model graphs; use "
                                    f"{', '.join(ENCODINGS)}")
    auto_level = accuracy_level is None
    accuracy_level = INT8_COMPUTE if auto_level else accuracy_level
    if accuracy_level not in (0, 1, 2, 3, 4):
        raise QuantizationError(f"--accuracy-level {accuracy_level}: use 0 (fp32 compute) to 4 (int8 compute)")
    name = name or ckpt.path.resolve().name
    from ..api import check_artifact_name

    check_artifact_name(name)
    ensure_writable_dir(out)
    eos = _eos_ids(ckpt, spec)
    step = Steps(1 + len(modes) * (spec.n_layer + 2), progress)

    step("reference outputs (transformers)")
    ref = parity.reference(ckpt.path, eos)
    artifacts, failed = [], []
    with StagingDir(out) as staging, output_errors(staging.out_dir):
        copied = [f for f in TOKENIZER_FILES if (ckpt.path / f).is_file()]
        for f in copied:
            shutil.copyfile(ckpt.path / f, staging.file(f))
        for mode in modes:
            file = f"{name}.{mode.tag}.onnx"
            t0 = time.perf_counter()
            g = GraphWriter(staging.file(file + ".data"))
            enc = ENCODINGS[mode.name](g, block_size, symmetric, accuracy_level)
            try:
                build_decoder(g, enc, spec, lambda n: ckpt.tensors[n].load() if n in ckpt.tensors else _missing(ckpt, n),
                              on_layer=lambda i, m=mode.name: step(f"{m} layer {i + 1}/{spec.n_layer}"), ops=ops)
                g.finish(staging.file(file), OPSET, "edgelift", {"edgelift.mode": mode.name, "edgelift.family": spec.family})
            finally:
                g.close()
            _check_graph(staging.file(file))
            sidecar = f"{name}.{mode.tag}.genai_config.json"
            staging.file(sidecar).write_text(json.dumps(genai_config(spec, file, eos), indent=2) + "\n", encoding="utf-8")
            build_s = time.perf_counter() - t0
            step(f"{mode.name} parity (ONNX Runtime vs transformers)")
            par, verdict, details = _parity(staging.file(file), threads, ref, mode.name)
            level = accuracy_level if enc.quantized_matmuls else None
            fell_back = None
            if not verdict.passed and auto_level and level == INT8_COMPUTE:
                set_accuracy_level(staging.file(file), FP32_COMPUTE)
                again = _parity(staging.file(file), threads, ref, mode.name)
                if again[1].passed:
                    fell_back = par
                    (par, verdict, details), level = again, FP32_COMPUTE
                    enc.accuracy_level, enc.activations = FP32_COMPUTE, "fp32 (int8 compute missed the gate)"
                else:  # no better in fp32: the faster graph stays (it is refused or kept all the same)
                    set_accuracy_level(staging.file(file), INT8_COMPUTE)
            if level is not None:
                details["accuracy_level"] = level
            details.update({"family": spec.family, "layers": spec.n_layer, "attention": ops, "quantized_matmuls": enc.quantized_matmuls,
                            "weights_by_bits": {str(k): v for k, v in sorted(enc.bits_used.items())},
                            "block_size": block_size if mode.name in ("int4", "int8-dynamic") else None,
                            "build_seconds": round(build_s, 3), "sidecar": sidecar, "tokenizer_files": copied})
            files = [file, file + ".data", sidecar]
            artifact = Artifact(
                path=str(staging.out_dir / file), format="onnx",
                quantization=Quantization(mode.name, enc.weights, enc.activations, details),
                size_bytes=sum(path_size(staging.file(f)) for f in files), parameters=ckpt.parameter_count(),
                conversion_time_s=round(build_s, 4), parity=par, status="passed" if verdict.passed else "failed",
                gate=verdict.to_dict(), built_shapes={"input_ids": ["batch_size", "sequence_length"]})
            if fell_back is not None:
                artifact.warnings.append(
                    f"int8 compute (accuracy level {INT8_COMPUTE}) missed the gate on this CPU (top-1 "
                    f"{fell_back.primary.top1_agreement:.3f}): the artifact computes in fp32 (accuracy level "
                    f"{FP32_COMPUTE}), slower; pass --accuracy-level {INT8_COMPUTE} to keep int8 compute")
            if verdict.passed or keep_failed:
                staging.commit(*files)
            else:
                staging.discard(*files)
                artifact.path = ""
                artifact.warnings.append("not written: below its parity gate (pass --keep-failed to keep it)")
            if not verdict.passed:
                failed.append(artifact)
            artifacts.append(artifact)
        result = ConversionResult(
            SourceInfo("hf", name, str(ckpt.path), ckpt.parameter_count(),
                       [TensorInfo("input_ids", ["batch_size", "sequence_length"], "int64")],
                       [TensorInfo("logits", ["batch_size", "sequence_length", spec.vocab], "float32")],
                       notes=[f"{spec.family} decoder, {spec.n_layer} layers, {spec.n_head} heads "
                              f"({spec.n_kv_head} key/value), key-value cache inputs past_key_values.*"]),
            artifacts)
        if any(a.path for a in artifacts):
            staging.commit(*copied)
            result.stage(staging)
            staging.publish()
    if failed:
        lines = "; ".join(f"onnx {a.mode} fails its parity gate ({', '.join(a.gate['failures'])})" for a in failed)
        raise ParityError(lines + ("" if keep_failed else " — not written (--keep-failed keeps failed artifacts)"), result)
    return result


CONTRIB_KERNELS = ("GroupQueryAttention", "SkipSimplifiedLayerNormalization")


def resolve_attention(attention: str) -> str:
    if attention not in ("auto", "contrib", "standard"):
        raise QuantizationError(f"--attention must be auto, contrib or standard, got {attention!r}")
    if attention != "auto":
        return attention
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_c

        have = {k.op_name for k in ort_c.get_all_opkernel_def() if k.provider == "CPUExecutionProvider"}
    except (ImportError, AttributeError):
        return "standard"
    return "contrib" if all(k in have for k in CONTRIB_KERNELS) else "standard"


def _missing(ckpt, name: str):
    from ...errors import SourceError

    raise SourceError(f"{ckpt.path}: tensor '{name}' is missing from the checkpoint's safetensors")


def _eos_ids(ckpt, spec: DecoderSpec) -> list[int]:
    eos = list(spec.eos_token_ids)
    gen = ckpt.json("generation_config.json") or {}
    extra = gen.get("eos_token_id")
    for t in (extra if isinstance(extra, list) else [extra] if extra is not None else []):
        if t not in eos:
            eos.append(int(t))
    return eos


def genai_config(spec: DecoderSpec, file: str, eos: list[int]) -> dict:
    """onnxruntime-genai's genai_config.json layout (what its runners read), plus the facts ours need."""
    return {"model": {
        "type": spec.family, "context_length": spec.context_length, "vocab_size": spec.vocab,
        "bos_token_id": spec.bos_token_id, "eos_token_id": eos, "pad_token_id": eos[0] if eos else 0,
        "decoder": {
            "filename": file, "head_size": spec.head_dim, "hidden_size": spec.hidden,
            "num_attention_heads": spec.n_head, "num_key_value_heads": spec.n_kv_head, "num_hidden_layers": spec.n_layer,
            "session_options": {"log_id": "edgelift", "provider_options": []},
            "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                       "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
            "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                        "present_value_names": "present.%d.value"}}},
        "search": {"max_length": spec.context_length, "do_sample": False, "num_beams": 1, "temperature": 1.0,
                   "top_k": 0, "top_p": 1.0}}


def _check_graph(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as e:  # a bug in the builder, never the user's input
        raise RuntimeError(f"the graph written for {path.name} fails the ONNX checker: {str(e).splitlines()[0]}") from e


INT8_COMPUTE, FP32_COMPUTE = 4, 0  # MatMulNBits accuracy levels


def _parity(path: Path, threads: int | None, ref, mode: str):
    session = _open(path, threads)
    try:
        return parity.check(session, ref, mode, _runtime())
    finally:
        session.close()


def set_accuracy_level(path: Path, level: int) -> None:
    """Rewrite every MatMulNBits' ``accuracy_level`` in the graph file (the weights, in external data, stay)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            for a in node.attribute:
                if a.name == "accuracy_level":
                    a.i = level
    onnx.save(model, str(path))


def _open(path: Path, threads: int | None):
    from ...runtimes.ort import open_onnxruntime

    return open_onnxruntime(path, threads)


def _runtime() -> str:
    import onnxruntime

    return f"onnxruntime {onnxruntime.__version__} (edgelift decoder backend, key-value cache)"
