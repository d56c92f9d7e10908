"""GGUF backend: llama.cpp through ``llama-cpp-python`` (the ``[llama]`` extra).

The signature is ``tokens: int32[n]`` -> ``logits: float32[n, n_vocab]`` (one row per position);
``tokenize``, ``detokenize``, ``generate`` and ``embed`` use the GGUF's own vocabulary.
The header is validated by our bounded reader first, so llama.cpp never parses a broken file.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..core.formats import ModelFormat
from ..core.gguf import read_gguf_info
from ..core.tensors import TensorSpec
from ..errors import InputMismatchError, InvalidOptionError, ModelFormatError, shown
from .base import Session, register_backend


@contextlib.contextmanager
def _captured_llama_log():
    """Collect llama.cpp's info/warning/error log lines (its own callback drops them when quiet), so a
    failed load can say why and a split load what each device holds; llama-cpp-python's callback is restored
    afterwards."""
    import ctypes

    import llama_cpp
    from llama_cpp import _logger

    lines: list[str] = []

    @llama_cpp.llama_log_callback
    def collect(level, text, user_data):
        if level in (2, 3, 4):  # GGML_LOG_LEVEL_INFO (buffer sizes), _WARN, _ERROR
            lines.append(text.decode("utf-8", errors="replace").strip())

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        yield lines
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


def _has_local_gpu(llama_cpp) -> bool:
    """A GPU backend in this llama.cpp build (RPC servers are not one: -ngl without --rpc would not reach them)."""
    if not llama_cpp.llama_supports_gpu_offload():
        return False
    if not llama_cpp.llama_supports_rpc():
        return True
    from .rpc import local_gpu_count

    return local_gpu_count() > 0


class LlamaSession(Session):
    def __init__(self, path: Path, threads: int | None, n_ctx: int, embedding: bool, logits_all: bool,
                 n_gpu_layers: int = 0, devices=None) -> None:
        import llama_cpp
        from llama_cpp import Llama

        if not isinstance(n_gpu_layers, int) or isinstance(n_gpu_layers, bool) or n_gpu_layers < -1:
            raise InvalidOptionError(f"-ngl / n_gpu_layers must be an integer >= 0 (-1: all), got {n_gpu_layers!r}")
        if n_gpu_layers and devices is None and not _has_local_gpu(llama_cpp):
            raise InvalidOptionError(f"-ngl {n_gpu_layers}: this llama.cpp build has no GPU backend, so every layer "
                                     "would run on the CPU; rebuild llama-cpp-python with CMAKE_ARGS=-DGGML_CUDA=ON "
                                     "(or Metal/Vulkan), or drop -ngl")
        self.n_gpu_layers = n_gpu_layers
        info = read_gguf_info(path)
        check_llama_preconditions(info)
        self.architecture = info.architecture
        self.logits_all = logits_all
        split = None
        self.devices = []
        if devices is not None:  # llama.cpp's RPC backend: every layer on the devices, split by their memory
            from .rpc import ModelBytes, check_reachable, ggml, parse_devices, tensor_split

            self.devices = parse_devices(devices)
            size = ModelBytes.of_gguf(info)
            tensor_split(self.devices, size)  # refused before any connection when they cannot hold it
            check_reachable(self.devices)  # llama.cpp aborts the process on a server it cannot reach
            g = ggml()
            for d in self.devices:
                g.add_server(d.endpoint)
            split = tensor_split(self.devices, size, g.registered)
            n_gpu_layers = -1
        self.tensor_split = split
        from .rpc import check_registered_reachable

        check_registered_reachable()
        with _captured_llama_log() as log:
            try:
                self.llm = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, logits_all=logits_all,
                                 n_gpu_layers=n_gpu_layers, tensor_split=split,
                                 embedding=embedding, verbose=False)
            except (ValueError, RuntimeError) as e:
                why = next((ln for ln in reversed(log) if ln), str(e))
                raise ModelFormatError(
                    f"llama.cpp cannot load {path} (architecture '{self.architecture}'): {why}") from e
        # what each RPC device holds, as llama.cpp's allocator reports it while loading
        self.device_buffers = device_buffer_bytes(log) if self.devices else {}
        self.n_vocab = self.llm.n_vocab()
        self.n_ctx = self.llm.n_ctx()
        self.inputs = [TensorSpec("tokens", (None,), "int32")]
        self.outputs = [TensorSpec("logits", (None, self.n_vocab), "float32")]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Logits for every position (``logits_all=True``, the default), else for the last one."""
        ids = [int(t) for t in feeds["tokens"]]
        if not ids or len(ids) > self.n_ctx:
            raise InvalidOptionError(f"need 1..{self.n_ctx} tokens (n_ctx), got {len(ids)}")
        bad = [t for t in ids if not 0 <= t < self.n_vocab]
        if bad:
            raise InputMismatchError(f"token ids {bad[:5]} are outside the vocabulary [0, {self.n_vocab})")
        self.llm.reset()
        self.llm.eval(ids)
        rows = self.llm.scores[: len(ids)] if self.logits_all else self.llm.scores[len(ids) - 1 : len(ids)]
        return {"logits": np.array(rows, dtype=np.float32, copy=True)}

    def eval_tokens(self, ids: list[int], reset: bool = False) -> np.ndarray:
        """Extend the sequence by ``ids`` (restart it with ``reset``); the last position's logits.
        The step API the profiler times: prompt processing is one call, generation one call per token."""
        if reset:
            self.llm.reset()
        self.llm.eval([int(t) for t in ids])
        if self.logits_all:
            return np.array(self.llm.scores[self.llm.n_tokens - 1], dtype=np.float32)
        # without logits_all llama-cpp-python keeps no scores: the context holds the last row only
        return np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.n_vocab,)).astype(np.float32)

    def tokenize(self, text: str, add_bos: bool = True) -> np.ndarray:
        return np.asarray(self.llm.tokenize(text.encode(), add_bos=add_bos, special=True), dtype=np.int32)

    def detokenize(self, ids) -> str:
        return self.llm.detokenize([int(t) for t in ids]).decode(errors="replace")

    def generate(self, prompt: str, max_tokens: int = 32, temperature: float = 0.0, stream: bool = False,
                 **sampling) -> str | Iterator[str]:
        """Complete ``prompt``; greedy at temperature 0. With ``stream=True``, yield text pieces."""
        if not prompt:
            raise InvalidOptionError("the prompt is empty")
        if max_tokens < 1:
            raise InvalidOptionError(f"max_tokens must be >= 1, got {max_tokens}")
        n_prompt = len(self.tokenize(prompt))
        if n_prompt + max_tokens > self.n_ctx:
            raise InvalidOptionError(
                f"the prompt is {n_prompt} tokens and {max_tokens} more were asked for, but the context "
                f"holds {self.n_ctx}: shorten it or load with n_ctx={n_prompt + max_tokens}")
        self.llm.reset()
        out = self.llm.create_completion(prompt, max_tokens=max_tokens, temperature=temperature,
                                         stream=stream, **sampling)
        if stream:
            return (chunk["choices"][0]["text"] for chunk in out)
        return out["choices"][0]["text"]

    def embed(self, text: str) -> np.ndarray:
        """Embeddings of ``text`` (load with ``embedding=True``): pooled ``(n_embd,)`` for models
        with a pooling type (BERT), else one row per token ``(n_tokens, n_embd)``."""
        if not self.llm.context_params.embeddings:
            raise InvalidOptionError("load the model with embedding=True to compute embeddings")
        return np.asarray(self.llm.embed(text), dtype=np.float32)

    def close(self) -> None:
        if getattr(self, "llm", None) is not None:
            self.llm.close()
            self.llm = None


_BUFFER_LINE = re.compile(r"RPC\d*\[([^\]]+)\]\s+(model|KV|compute) buffer size\s*=\s*([\d.]+) MiB")


def device_buffer_bytes(log: list[str]) -> dict[str, dict[str, int]]:
    """Per RPC endpoint, the bytes llama.cpp allocated there while loading — weights (``model``), ``kv`` cache and
    ``compute`` buffers — from its load log ("RPC0[10.0.0.2:50052] model buffer size = 33.82 MiB")."""
    out: dict[str, dict[str, int]] = {}
    for line in log:
        for endpoint, kind, mib in _BUFFER_LINE.findall(line):
            kinds = out.setdefault(endpoint, {})
            kinds[kind.lower()] = kinds.get(kind.lower(), 0) + int(float(mib) * 2**20)
    return out


# Hyperparameters llama.cpp reads for most architectures, with the ranges outside which it aborts (GGML_ASSERT)
# or sizes buffers from them; per-layer arrays (OpenELM's head counts) are checked element by element.
LLAMA_MAX_LAYERS = 512  # llama.cpp's own limit (llama-hparams.h)
INT_HPARAMS = {"block_count": (1, LLAMA_MAX_LAYERS), "embedding_length": (1, 1 << 20), "context_length": (1, 1 << 24),
               "feed_forward_length": (0, 1 << 22), "attention.head_count": (0, 1 << 12),
               "attention.head_count_kv": (0, 1 << 12), "attention.key_length": (1, 1 << 14),
               "attention.value_length": (1, 1 << 14), "rope.dimension_count": (0, 1 << 14),
               "expert_count": (0, 512), "expert_used_count": (0, 512), "vocab_size": (1, 1 << 24)}
FLOAT_HPARAMS = {"attention.layer_norm_rms_epsilon": (0.0, 1.0), "attention.layer_norm_epsilon": (0.0, 1.0),
                 "rope.freq_base": (1e-6, 1e15), "rope.scale_linear": (1e-6, 1e6), "rope.scaling.factor": (1e-6, 1e6)}


def check_llama_preconditions(info) -> None:
    """Header facts llama.cpp asserts on (aborting the process) rather than reporting: check first."""
    arch, meta = info.architecture, info.metadata
    for name, (lo, hi) in {**INT_HPARAMS, **FLOAT_HPARAMS}.items():
        v = meta.get(f"{arch}.{name}")
        values = v.get("values") if isinstance(v, dict) else [v]
        if values is None and isinstance(v, dict):  # an array whose values the header reader skipped
            values = []
        for x in values or []:
            if x is None:
                continue
            number = isinstance(x, (int, float)) and not isinstance(x, bool)
            in_range = number and x == x and (lo < x < hi if name in FLOAT_HPARAMS else lo <= x <= hi)
            if not in_range:
                raise ModelFormatError(f"{info.path}: {arch}.{name} is {shown(x)}; llama.cpp needs a number in "
                                       f"{'(' if name in FLOAT_HPARAMS else '['}{lo}, {hi}{')' if name in FLOAT_HPARAMS else ']'}"
                                       " — the file is corrupted")
    used, experts = meta.get(f"{arch}.expert_used_count"), meta.get(f"{arch}.expert_count")
    if isinstance(used, int) and isinstance(experts, int) and used > experts:
        raise ModelFormatError(f"{info.path}: {arch} uses {used} of {experts} experts; the file is corrupted")
    tokens = meta.get("tokenizer.ggml.tokens")
    if isinstance(tokens, dict):
        if tokens.get("duplicates"):
            raise ModelFormatError(f"{info.path}: the vocabulary repeats tokens; the file is corrupted")
        embd = next((t for t in info.tensors if t.name == "token_embd.weight"), None)
        if embd is not None and len(embd.shape) == 2 and embd.shape[1] != tokens["length"]:
            raise ModelFormatError(
                f"{info.path}: {tokens['length']} vocabulary tokens but token_embd has {embd.shape[1]} rows")


@register_backend("llama.cpp", formats=(ModelFormat.GGUF,), package="llama_cpp", extra="llama")
def open_llama(path: Path, threads: int | None, *, n_ctx: int = 512, embedding: bool = False,
               logits_all: bool = True, n_gpu_layers: int = 0, devices=None) -> Session:
    """``devices``: RPC servers (``["host:port=512MB", ...]`` or a fleet .toml) that hold the model's layers,
    split by their memory (``runtimes/rpc.py``); such a model runs in a worker process (``llama_worker.py``:
    llama.cpp aborts the process that loses a server)."""
    if devices is not None:
        from .llama_worker import WorkerLlamaSession

        return WorkerLlamaSession(path, threads, n_ctx, embedding, logits_all, n_gpu_layers, devices)
    return LlamaSession(path, threads, n_ctx, embedding, logits_all, n_gpu_layers, devices)
