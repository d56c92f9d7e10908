"""``edgelift.load``: one API over every backend."""

from __future__ import annotations

import importlib
import os
import platform
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from ..core.formats import ModelFormat, detect_format
from ..core.hub_cache import resolve_model_path
from ..core.tensors import TensorSpec
from ..errors import (
    BackendUnavailableError,
    EdgeError,
    InferenceError,
    InputMismatchError,
    InvalidOptionError,
    MissingDependencyError,
    ModelClosedError,
)
from .base import BACKENDS, Backend, Session

# Backend modules, imported on first use; each registers its backends (in preference order).
_BACKEND_MODULES = ("edgelift.runtimes.ort", "edgelift.runtimes.tflite", "edgelift.runtimes.coreml",
                    "edgelift.runtimes.llama", "edgelift.runtimes.edge_llm")


MAX_THREADS_PER_CORE = 4  # beyond this, backends thrash (and some crash on absurd counts)

# Preference order: for a format, the first installed backend in this list is chosen.
PREFERENCE = ("onnxruntime", "litert", "tflite-runtime", "coreml", "llama.cpp", "edge")


def backends() -> dict[str, Backend]:
    """Every registered backend, in preference order (independent of import order)."""
    for m in _BACKEND_MODULES:
        importlib.import_module(m)
    rank = {name: i for i, name in enumerate(PREFERENCE)}
    return dict(sorted(BACKENDS.items(), key=lambda kv: rank.get(kv[0], len(rank))))


def _check_platform(b: Backend) -> None:
    system = platform.system()
    if b.platforms and system not in b.platforms:
        where = ", ".join("Apple platforms (macOS, iOS)" if p == "Darwin" else p for p in b.platforms)
        raise BackendUnavailableError(
            f"backend '{b.name}' runs only on {where}, not {system}: run the model there "
            "(its conversion's parity report checks it here)")


def choose_backend(fmt: ModelFormat, backend: str = "auto") -> Backend:
    table = backends()
    if backend != "auto":
        if backend not in table:
            raise InvalidOptionError(f"unknown backend '{backend}'; choose one of: auto, {', '.join(table)}")
        b = table[backend]
        if fmt not in b.formats:
            raise InvalidOptionError(
                f"backend '{backend}' runs {', '.join(f.value for f in b.formats)} models, not {fmt.value}")
        _check_platform(b)
        if not b.installed():
            raise MissingDependencyError(_install_hint(b))
        return b
    candidates = [b for b in table.values() if fmt in b.formats]
    if not candidates:
        raise InvalidOptionError(
            f"{fmt.value} files are a conversion source, not a runnable artifact: convert them first "
            "(edge convert MODEL --to onnx)")
    if candidates and all(b.platforms and platform.system() not in b.platforms for b in candidates):
        _check_platform(candidates[0])
    for b in candidates:
        if b.installed():
            return b
    raise MissingDependencyError(
        f"no backend for {fmt.value} models is installed: " + "; or ".join(_install_hint(b) for b in candidates))


def _install_hint(b: Backend) -> str:
    from ..errors import install_hint

    how = install_hint(b.extra) if b.extra else f"pip install {b.package}"
    return f"backend '{b.name}' needs the '{b.package}' package: {how}"


class Model:
    """A loaded model: typed signature, ``run``, and the backend that runs it.

    ``run`` takes a dict keyed by input name, or arrays in input order, checks them against the
    signature (names, dtypes, ranks and fixed dimensions) and returns a dict of outputs.
    """

    def __init__(self, session: Session, backend: str, path: Path, fmt: ModelFormat, memory_plan=None) -> None:
        self._session = session
        self.memory_plan = memory_plan  # the BudgetPlan in use (load(..., memory_budget=...)), else None
        self.backend = backend
        self.path = path
        self.format = fmt
        self.inputs: list[TensorSpec] = list(session.inputs)
        self.outputs: list[TensorSpec] = list(session.outputs)
        # per input: (name, dtype, rank, fixed dims) — checked on every run, so precomputed
        self._checks = [(s.name, _numpy_dtype(s.dtype), len(s.shape),
                         tuple((i, d) for i, d in enumerate(s.shape) if isinstance(d, int)))
                        for s in self.inputs]
        self._names = {s.name for s in self.inputs}
        self._closed = False

    @property
    def session(self) -> Session:
        """The backend's own session, for options this API does not cover."""
        return self._session

    def run(self, *args: np.ndarray | dict[str, np.ndarray], **named: np.ndarray) -> dict[str, np.ndarray]:
        if self._closed:
            raise ModelClosedError(f"{self.path.name} was closed: load it again to run it")
        feeds = self._feeds(args, named)
        for name, dtype, rank, fixed in self._checks:
            a = feeds[name]
            if dtype is not None and a.dtype != dtype:
                raise InputMismatchError(f"input '{name}' must be {dtype}, got {a.dtype}: cast it with .astype({dtype.name!r})")
            if a.ndim != rank or any(a.shape[i] != d for i, d in fixed) or a.size == 0:
                want = next(s for s in self.inputs if s.name == name).shape
                raise InputMismatchError(f"input '{name}' must have shape {list(want)} (non-empty), got {list(a.shape)}")
        try:
            return self._session.run(feeds)
        except EdgeError:
            raise
        except Exception as e:  # the backend's own error types
            text = " ".join(str(e).split())[:300] or type(e).__name__
            raise InferenceError(f"{self.backend} failed to run {self.path.name}: {text}") from e

    def _feeds(self, args: tuple, named: dict) -> dict[str, np.ndarray]:
        if len(args) == 1 and isinstance(args[0], dict) and not named:
            feeds = args[0]
        elif args and not named:
            if len(args) != len(self.inputs):
                raise InputMismatchError(
                    f"the model takes {len(self.inputs)} input(s) ({', '.join(self._names)}), got {len(args)}")
            feeds = {s.name: a for s, a in zip(self.inputs, args)}
        else:
            feeds = named
        if feeds.keys() != self._names:
            missing, extra = sorted(self._names - feeds.keys()), sorted(feeds.keys() - self._names)
            raise InputMismatchError(f"input names do not match: missing {missing}, unexpected {extra}")
        return {k: v if isinstance(v, np.ndarray) else np.asarray(v) for k, v in feeds.items()}

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._session.close()

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        # backend-specific extras (e.g. generate/tokenize for GGUF) come from the session
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._session, name)

    def __repr__(self) -> str:
        sig = ", ".join(s.describe() for s in self.inputs)
        return f"Model({self.path.name}, backend={self.backend}, inputs=[{sig}])"


def load(path: str | Path, backend: str = "auto", threads: int | None = None, *,
         memory_budget: str | int | None = None, **options: Any) -> Model:
    """Load a model file with the best installed backend for its format (detected from content).

    ``path``: a file, or a Hugging Face id already in the local cache (``ORG/NAME``, or ``ORG/NAME:Q4_K_M`` to
    pick one of several files, as llama.cpp's ``-hf`` does); nothing is downloaded.

    ``options`` go to the backend: ``providers``, ``optimization``, ``arena`` (onnxruntime);
    ``xnnpack`` (litert, tflite-runtime); ``n_ctx``, ``embedding`` (llama.cpp).
    ``memory_budget`` ("256KB", "1.5MB", "2MiB" or bytes; ONNX CNNs): run patch by patch (MCUNetV2)
    when the plain schedule's activation peak exceeds it, with ONNX Runtime's arena off so freed tensors
    are freed. The plan is made once per model and budget in a child process, measured there, and
    cached (``$EDGELIFT_CACHE/plans``); ``Model.memory_plan`` is the ``BudgetPlan`` in use.
    """
    p = resolve_model_path(path)  # a Hugging Face id (ORG/NAME[:PICK]): its file in the local cache
    fmt = detect_format(p)
    b = choose_backend(fmt, backend)
    limit = MAX_THREADS_PER_CORE * (os.cpu_count() or 1)
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or not 1 <= threads <= limit):
        raise InvalidOptionError(f"threads must be an integer from 1 to {limit} (this machine has "
                                 f"{os.cpu_count()} cores), got {threads!r}")
    if memory_budget is not None and fmt is ModelFormat.GGUF:
        if backend not in ("auto", "edge"):
            raise InvalidOptionError("memory_budget for GGUF models streams weights in the edge engine: "
                                     "use backend='edge'")
        b = choose_backend(fmt, "edge")  # weights streamed from storage under the budget (FlashWeights)
        return Model(b.open(p, threads, memory_budget=memory_budget, **options), b.name, p, fmt)
    if memory_budget is not None:
        if fmt is not ModelFormat.ONNX or b.name != "onnxruntime":
            raise InvalidOptionError("memory_budget works on ONNX models (patch-based inference, onnxruntime) "
                                     "and GGUF models (flash offloading, backend='edge')")
        from .budget import open_patched

        session, plan = open_patched(p, memory_budget, threads, **options)
        return Model(session, b.name, p, fmt, plan)
    return Model(b.open(p, threads, **options), b.name, p, fmt)


def _numpy_dtype(name: str) -> np.dtype | None:
    """numpy dtype of a signature entry; None for types numpy lacks (bfloat16, strings): unchecked."""
    try:
        return np.dtype(name)
    except TypeError:
        return None
