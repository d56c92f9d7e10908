"""The backend contract and its registry.

A backend turns a model file into a :class:`Session` with typed signatures and a ``run`` method.
Backends register under an explicit key with the formats they serve, in preference order; each
backend module imports its runtime package only inside :meth:`Backend.open`, so listing or
choosing backends costs nothing.
"""

from __future__ import annotations

import importlib.util
import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.formats import ModelFormat
from ..core.tensors import InputSet, TensorSpec
from ..errors import InvalidOptionError


class Session(ABC):
    """An open model in one backend. ``run`` takes and returns arrays keyed by tensor name."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    @abstractmethod
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None:  # noqa: B027 - optional for backends that hold nothing
        """Release native resources."""


@dataclass(frozen=True)
class Backend:
    name: str
    formats: tuple[ModelFormat, ...]
    package: str  # the import name of the runtime package, checked without importing it
    extra: str  # pip extra that installs it
    opener: Any  # callable(path, threads, **options) -> Session
    platforms: tuple[str, ...] = ()  # platform.system() values it runs on; empty = all

    def installed(self) -> bool:
        try:
            return importlib.util.find_spec(self.package) is not None
        except (ImportError, ValueError):
            return False

    def open(self, path: Path, threads: int | None, **options: Any) -> Session:
        params = inspect.signature(self.opener).parameters
        accepted = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise InvalidOptionError(
                f"backend '{self.name}' has no option(s) {unknown}; it accepts: {', '.join(accepted) or 'none'}")
        session = self.opener(path, threads, **options)
        _check_session(self.name, session)
        return session


BACKENDS: dict[str, Backend] = {}


def register_backend(name: str, *, formats: tuple[ModelFormat, ...], package: str, extra: str,
                     platforms: tuple[str, ...] = ()):
    """Register ``opener`` under ``name``; earlier registrations are preferred for a format."""

    def deco(opener):
        if name in BACKENDS:
            raise ValueError(f"backend '{name}' is already registered")
        BACKENDS[name] = Backend(name, formats, package, extra, opener, platforms)
        return opener

    return deco


def fixed_batch(specs: list[TensorSpec], unbatched: frozenset[str] = frozenset()) -> int | None:
    """The batch size every batched input is fixed to, or None when the batch axis is dynamic."""
    dims = [s.shape[0] for s in specs if s.shape and s.name not in unbatched]
    return dims[0] if dims and all(isinstance(d, int) for d in dims) and len(set(dims)) == 1 else None


def iter_batches(data: InputSet, fixed: int | None, batch_size: int = 64):
    """(feeds, valid rows) over ``data``, sized for a model with a fixed or a dynamic batch axis."""
    if fixed is not None:
        yield from data.fixed_batches(fixed)
    else:
        for feeds in data.batches(batch_size):
            yield feeds, next(iter(feeds.values())).shape[0]


def run_all(session: Session, data: InputSet, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Run every sample of ``data`` through ``session``: in batches of ``batch_size`` when the batch
    axis is dynamic, else in padded batches of the model's fixed size."""
    chunks: dict[str, list[np.ndarray]] = {s.name: [] for s in session.outputs}
    from ..errors import EdgeError, InferenceError

    for feeds, valid in iter_batches(data, fixed_batch(session.inputs, data.unbatched), batch_size):
        try:
            outputs = session.run(feeds)
        except EdgeError:
            raise
        except Exception as e:  # the runtime's own error (ORT's Fail, LiteRT's RuntimeError): one line
            text = " ".join(str(e).split())[:240] or type(e).__name__
            raise InferenceError(f"running the model on {data.source} data failed: {text}") from e
        for name, value in outputs.items():
            chunks[name].append(value[:valid])
    return {k: np.concatenate(v, axis=0) for k, v in chunks.items()}


def _check_session(name: str, session: Any) -> None:
    """A backend must hand back a Session with TensorSpec signatures: fail with its name if not."""
    if not isinstance(session, Session):
        raise TypeError(f"backend '{name}' returned {type(session).__name__}, not a Session")
    for spec in [*session.inputs, *session.outputs]:
        if not isinstance(spec, TensorSpec):
            raise TypeError(f"backend '{name}' described a tensor as {type(spec).__name__}, not TensorSpec")
