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
    # The format fixes the batch at 1 (TFLite): a dynamic batch axis in the export is wasted work.
    fixed_batch: bool = False
    # (prepared graph) -> None: raises UnsupportedOperatorError listing every node the target cannot express,
    # before any reference run (lowering targets only)
    precheck: Callable | None = None
    # modes whose artifacts can keep named nodes in float (ConvertOptions.float_nodes): mixed-precision repair
    repairable: tuple[str, ...] = ()
    # a lowering target that can leave input dims resizable ('?' in --input-shape; TFLite's shape_signature)
    dynamic_dims: bool = False


TARGETS: dict[str, Target] = {}


def register_target(name: str, *, suffix: str, fixed_batch: bool = False, precheck: Callable | None = None,
                    repairable: tuple[str, ...] = (), dynamic_dims: bool = False):
    def deco(fn):
        if name in TARGETS:
            raise ValueError(f"target '{name}' is already registered")
        TARGETS[name] = Target(name, suffix, fn, fixed_batch, precheck, repairable, dynamic_dims)
        return fn

    return deco


def get_target(name: str) -> Target:
    from . import to_coreml, to_onnx, to_tflite  # noqa: F401  (each registers its target)

    if name not in TARGETS:
        raise InvalidOptionError(f"unknown target format '{name}'; choose one of: {', '.join(TARGETS)}")
    return TARGETS[name]
