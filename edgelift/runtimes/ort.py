"""ONNX Runtime backend: sessions with typed signatures, selectable providers and options."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.formats import ModelFormat
from ..core.tensors import InputSet, TensorSpec
from ..errors import InvalidOptionError, ModelFormatError, UnsupportedOperatorError
from .base import Session, register_backend, run_all

# ONNX Runtime's type strings -> numpy dtype names.
_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(string)": "str",
    "tensor(bfloat16)": "bfloat16",
}

OPTIMIZATION_LEVELS = ("disabled", "basic", "extended", "all")


def _spec(arg) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else (d or None) for d in arg.shape)
    return TensorSpec(arg.name, shape, _ORT_TYPES.get(arg.type, arg.type))


# --ep short names (as onnxruntime-genai / optimum users write them) -> ONNX Runtime's provider names
PROVIDER_NAMES = {
    "cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider", "coreml": "CoreMLExecutionProvider", "openvino": "OpenVINOExecutionProvider",
    "qnn": "QNNExecutionProvider", "dml": "DmlExecutionProvider", "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider", "xnnpack": "XnnpackExecutionProvider", "nnapi": "NnapiExecutionProvider",
    "acl": "ACLExecutionProvider", "armnn": "ArmNNExecutionProvider", "webgpu": "WebGpuExecutionProvider",
}
# the package that brings each provider, for the refusal's "what to do"
PROVIDER_PACKAGES = {
    "CUDAExecutionProvider": "onnxruntime-gpu", "TensorrtExecutionProvider": "onnxruntime-gpu (with TensorRT)",
    "OpenVINOExecutionProvider": "onnxruntime-openvino", "QNNExecutionProvider": "onnxruntime-qnn",
    "DmlExecutionProvider": "onnxruntime-directml", "CoreMLExecutionProvider": "onnxruntime on macOS",
    "ROCMExecutionProvider": "onnxruntime-rocm",
}


# Short --ep-option keys -> ONNX Runtime's TensorRT provider options (trtexec's --fp16 / --int8 and
# its engine cache, in the words TensorRT users know); full trt_* names pass through unchanged.
TENSORRT_OPTION_ALIASES = {"fp16": "trt_fp16_enable", "int8": "trt_int8_enable",
                           "engine_cache": "trt_engine_cache_path", "workspace": "trt_max_workspace_size"}


def tensorrt_options(opts: dict[str, str] | None) -> dict[str, str]:
    """TensorRT provider options with aliases expanded and the engine and timing caches on by default,
    under ``<edgelift cache>/tensorrt``: building an engine takes minutes, and without a cache every
    ``load()`` (every ``edge run``) would build it again. ``trt_engine_cache_enable=False`` turns it off."""
    out = {TENSORRT_OPTION_ALIASES.get(k, k): str(v) for k, v in (opts or {}).items()}
    if out.get("trt_engine_cache_enable", "true").lower() not in ("0", "false"):
        from ..core.cache import cache_root

        cache = out.setdefault("trt_engine_cache_path", str(cache_root() / "tensorrt"))
        out["trt_engine_cache_enable"] = "True"
        out.setdefault("trt_timing_cache_enable", "True")
        out.setdefault("trt_timing_cache_path", cache)
    return out


def provider_name(name: str) -> str:
    """``cuda`` / ``CUDA`` / ``CUDAExecutionProvider`` -> ``CUDAExecutionProvider``."""
    key = name.strip()
    if key.lower() in PROVIDER_NAMES:
        return PROVIDER_NAMES[key.lower()]
    full = {v.lower(): v for v in PROVIDER_NAMES.values()}
    return full.get(key.lower(), key)


def resolve_providers(providers, available: list[str], version: str = "") -> list:
    """The providers list ONNX Runtime takes — names, or (name, options) pairs — from short or full names,
    with the CPU provider last as the fallback for nodes the others do not take. A provider this build
    lacks is refused with what to install, never dropped silently (ONNX Runtime would run on the CPU)."""
    if providers is None:
        return ["CPUExecutionProvider"]
    if isinstance(providers, (str, tuple)):
        providers = [providers]
    out = []
    for p in providers:
        name, opts = (p[0], dict(p[1])) if isinstance(p, tuple) else (p, None)
        if not isinstance(name, str) or not name:
            raise InvalidOptionError(f"execution provider {p!r} not understood; write e.g. 'cuda' or 'CUDAExecutionProvider'")
        full = provider_name(name)
        if full not in available:
            have = ", ".join(a.replace("ExecutionProvider", "") for a in available)
            hint = PROVIDER_PACKAGES.get(full)
            raise InvalidOptionError(
                f"execution provider {name} ({full}) is not in this onnxruntime {version} (it has {have}): "
                + (f"install {hint} instead of onnxruntime" if hint else "install an onnxruntime build with it")
                + ", or use --ep cpu")
        if full == "TensorrtExecutionProvider":
            opts = tensorrt_options(opts)
        out.append((full, {k: str(v) for k, v in opts.items()}) if opts else full)
    names = [x[0] if isinstance(x, tuple) else x for x in out]
    if "CPUExecutionProvider" not in names:
        out.append("CPUExecutionProvider")
    return out


class OrtSession(Session):
    """An ``onnxruntime.InferenceSession`` with edgelift signatures and clear load errors."""

    def __init__(
        self,
        model: str | Path | bytes,
        threads: int | None = None,
        *,
        providers: list[str] | None = None,
        optimization: str = "all",
        arena: bool = True,
        profile_prefix: str | None = None,
        memory_reuse: bool = True,
    ) -> None:
        """``profile_prefix``: record ONNX Runtime's per-node trace (``end_profiling`` returns its file).
        ``memory_reuse=False``: no output takes over a dead tensor's buffer (ONNX Runtime's reuse chains
        keep a buffer as long as its last owner lives, which in a patched schedule spans patches)."""
        import onnxruntime as ort

        if optimization not in OPTIMIZATION_LEVELS:
            raise InvalidOptionError(
                f"optimization '{optimization}' unknown; choose one of: {', '.join(OPTIMIZATION_LEVELS)}")
        if not isinstance(arena, bool):
            raise InvalidOptionError(f"arena must be True or False, got {arena!r}")
        providers = resolve_providers(providers, ort.get_available_providers(), ort.__version__)
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = threads
        so.enable_cpu_mem_arena = arena
        if profile_prefix is not None:
            so.enable_profiling = True
            so.profile_file_prefix = profile_prefix
        if not arena:  # no arena: every tensor is its own allocation, freed when it dies (no run-wide block)
            so.enable_mem_pattern = False
        so.enable_mem_reuse = memory_reuse
        so.graph_optimization_level = {
            "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[optimization]
        try:
            src = model if isinstance(model, bytes) else str(model)
            self.session = ort.InferenceSession(src, so, providers=providers)
        except Exception as e:  # ORT raises its own Fail/InvalidGraph/NotImplemented types
            where = "the model" if isinstance(model, bytes) else str(model)
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if "NotImplemented" in type(e).__name__ or "Could not find an implementation" in msg:
                raise UnsupportedOperatorError(
                    f"ONNX Runtime has no kernel for an operator in {where}: {msg}"
                ) from e
            raise ModelFormatError(f"ONNX Runtime cannot load {where}: {msg}") from e
        self.inputs = [_spec(a) for a in self.session.get_inputs()]
        self.outputs = [_spec(a) for a in self.session.get_outputs()]
        self._output_names = [s.name for s in self.outputs]
        self.providers = self.session.get_providers()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._output_names, self.session.run(self._output_names, feeds)))

    def end_profiling(self) -> str:
        """Stop recording and return the trace file (Chrome trace JSON, one event per node run)."""
        return self.session.end_profiling()

    def close(self) -> None:
        self.session = None  # ORT frees the session when the last reference goes

    def run_all(self, data: InputSet, batch_size: int = 64) -> dict[str, np.ndarray]:
        return run_all(self, data, batch_size)


@register_backend("onnxruntime", formats=(ModelFormat.ONNX,), package="onnxruntime", extra="")
def open_onnxruntime(path: Path, threads: int | None, *, providers: list[str] | None = None,
                     optimization: str = "all", arena: bool = True, profile_prefix: str | None = None,
                     n_ctx: int | None = None) -> Session:
    """A decoder graph with a key-value cache (``input_ids`` + ``past_key_values.*``) comes back as an
    ``OnnxLlmSession`` (generate, tokenize, eval_tokens; ``n_ctx`` caps its context), anything else as
    an ``OrtSession``."""
    session = OrtSession(path, threads, providers=providers, optimization=optimization, arena=arena,
                         profile_prefix=profile_prefix)
    from .onnx_llm import OnnxLlmSession, is_decoder_graph

    if is_decoder_graph([s.name for s in session.inputs]):
        return OnnxLlmSession(session, Path(path), n_ctx)
    return session


