"""Registry of target formats (``--to``): one module per format registers its writer here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import InvalidOptionError


@dataclass(frozen=True)
class Target:
    name: str
    suffix: str
    build: Callable  # (base_model, mode, options, staging, name) -> BuiltArtifact


TARGETS: dict[str, Target] = {}


def register_target(name: str, *, suffix: str):
    def deco(fn):
        if name in TARGETS:
            raise ValueError(f"target '{name}' is already registered")
        TARGETS[name] = Target(name, suffix, fn)
        return fn

    return deco


def get_target(name: str) -> Target:
    from . import to_onnx, to_tflite  # noqa: F401  (each registers its target)

    if name not in TARGETS:
        raise InvalidOptionError(f"unknown target format '{name}'; choose one of: {', '.join(TARGETS)}")
    return TARGETS[name]
