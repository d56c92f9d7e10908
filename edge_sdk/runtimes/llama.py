"""GGUF backend: llama.cpp through ``llama-cpp-python`` (the ``[llama]`` extra).

The signature is ``tokens: int32[n]`` -> ``logits: float32[n, n_vocab]`` (one row per position);
``tokenize``, ``detokenize``, ``generate`` and ``embed`` use the GGUF's own vocabulary.
The header is validated by our bounded reader first, so llama.cpp never parses a broken file.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..core.formats import ModelFormat
from ..core.gguf import read_gguf_info
from ..core.tensors import TensorSpec
from ..errors import InvalidOptionError, ModelFormatError
from .base import Session, register_backend


@contextlib.contextmanager
def _quiet_native_stderr():
    """llama.cpp prints load diagnostics on fd 2 even with verbose=False; keep them for errors only."""
    import tempfile

    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield tmp
        finally:
            os.dup2(saved, 2)
            os.close(saved)


class LlamaSession(Session):
    def __init__(self, path: Path, threads: int | None, n_ctx: int, embedding: bool) -> None:
        from llama_cpp import Llama

        info = read_gguf_info(path)
        self.architecture = info.architecture
        with _quiet_native_stderr() as log:
            try:
                self.llm = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, logits_all=True,
                                 embedding=embedding, verbose=False)
            except (ValueError, RuntimeError) as e:
                log.seek(0)
                native = [ln for ln in log.read().decode(errors="replace").splitlines() if "error" in ln.lower()]
                why = native[-1].strip() if native else str(e)
                raise ModelFormatError(
                    f"llama.cpp cannot load {path} (architecture '{self.architecture}'): {why}") from e
        self.n_vocab = self.llm.n_vocab()
        self.n_ctx = self.llm.n_ctx()
        self.inputs = [TensorSpec("tokens", (None,), "int32")]
        self.outputs = [TensorSpec("logits", (None, self.n_vocab), "float32")]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = [int(t) for t in feeds["tokens"]]
        if not ids or len(ids) > self.n_ctx:
            raise InvalidOptionError(f"need 1..{self.n_ctx} tokens (n_ctx), got {len(ids)}")
        self.llm.reset()
        self.llm.eval(ids)
        return {"logits": np.array(self.llm.scores[: len(ids)], dtype=np.float32, copy=True)}

    def tokenize(self, text: str, add_bos: bool = True) -> np.ndarray:
        return np.asarray(self.llm.tokenize(text.encode(), add_bos=add_bos, special=True), dtype=np.int32)

    def detokenize(self, ids) -> str:
        return self.llm.detokenize([int(t) for t in ids]).decode(errors="replace")

    def generate(self, prompt: str, max_tokens: int = 32, temperature: float = 0.0, stream: bool = False,
                 **sampling) -> str | Iterator[str]:
        """Complete ``prompt``; greedy at temperature 0. With ``stream=True``, yield text pieces."""
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


@register_backend("llama.cpp", formats=(ModelFormat.GGUF,), package="llama_cpp", extra="llama")
def open_llama(path: Path, threads: int | None, *, n_ctx: int = 512, embedding: bool = False) -> LlamaSession:
    return LlamaSession(path, threads, n_ctx, embedding)
