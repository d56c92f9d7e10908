"""Input dims a Core ML package leaves flexible (``--input-shape x=1x3x?x?``; the search: ``converters/resizable.py``).

Two MIL programs lowered at different sizes that hold the same operators and the same constants differ only in
shapes: the package is then built from a program whose kept dims are MIL symbols. Core ML enforces the sizes it
accepts from the model description, so a step of 1 becomes a ``RangeDim`` (any size), and a larger step becomes
``EnumeratedShapes``: the multiples of the step between half and twice the built size, the only sizes where
the package computes what the original does (Core ML would accept the others from a range and answer wrongly).
"""

from __future__ import annotations

from itertools import product
from typing import Callable

import numpy as np

from ...errors import ConversionError, ShapeError, UnsupportedOperatorError
from ..resizable import find_step, lowering_failure
from .lower import mil_name

MAX_ENUMERATED = 64  # shapes listed per input; beyond it only sizes scaled alike on every kept dim are listed


def flexible_step(lower_at: Callable[[dict[str, tuple[int, ...]]], object], shapes: dict[str, tuple[int, ...]],
                  dynamic: dict[str, tuple[int, ...]]) -> int:
    """The size step at which the lowered program does not depend on the kept dims (ShapeError when none)."""
    base = lower_at(shapes)

    def differs_at(other_shapes, step: int) -> str:
        try:
            other = lower_at(other_shapes)
        except (ConversionError, UnsupportedOperatorError) as e:
            return lowering_failure(e)
        return _difference(base, other)

    return find_step("coreml", shapes, dynamic, differs_at)


def _difference(a, b) -> str:
    """Why program ``b`` (lowered at another size) is not ``a`` with other shapes; empty when it is."""
    ops_a, ops_b = list(a.functions["main"].operations), list(b.functions["main"].operations)
    if [op.op_type for op in ops_a] != [op.op_type for op in ops_b]:
        return "the lowering emits other operators at another size"
    for x, y in zip(ops_a, ops_b):
        if x.op_type == "const" and not _same_value(x.outputs[0].val, y.outputs[0].val):
            return f"constant '{x.outputs[0].name}' changes with the size"
    return ""


def _same_value(x, y) -> bool:
    x, y = np.asarray(x), np.asarray(y)
    return x.shape == y.shape and x.dtype == y.dtype and bool(np.all(x == y))


def input_types(graph, shapes: dict[str, tuple[int, ...]], dynamic: dict[str, tuple[int, ...]], step: int, ct) -> list:
    """``ct.TensorType`` per graph input: flexible where kept dynamic (see the module docstring)."""
    if step > 1 and len(dynamic) > 1:
        raise ShapeError(f"--to coreml: the dims kept dynamic resize only in steps of {step}, which a Core ML package "
                         "lists as enumerated shapes for one input only; give the others a size in --input-shape")
    out = []
    for name in graph.inputs:
        built, axes = shapes[name], dynamic.get(name, ())
        if not axes:
            shape = ct.Shape(built)
        elif step == 1:
            shape = ct.Shape(tuple(ct.RangeDim(lower_bound=1, upper_bound=-1, default=d) if i in axes else d
                                   for i, d in enumerate(built)))
        else:
            shape = ct.EnumeratedShapes(shapes=enumerated(built, axes, step), default=built)
        out.append(ct.TensorType(name=mil_name(name), shape=shape))
    return out


def enumerated(built: tuple[int, ...], axes: tuple[int, ...], step: int) -> list[tuple[int, ...]]:
    """Shapes with each kept dim a multiple of ``step`` from half to twice its built size (the built shape
    included); scaled alike on every kept dim when the cross product would list more than MAX_ENUMERATED."""
    def sizes(d: int) -> list[int]:
        return sorted({s for s in range(step, 2 * d + 1, step) if s * 2 >= d} | {d})

    per_axis = [sizes(built[a]) for a in axes]
    combos = list(product(*per_axis))
    if len(combos) > MAX_ENUMERATED:
        combos = [tuple(built[a] * k // 4 for a in axes) for k in range(2, 9)
                  if all(built[a] * k % 4 == 0 and (built[a] * k // 4) % step == 0 for a in axes)]
    out = []
    for combo in combos:
        shape = list(built)
        for a, s in zip(axes, combo):
            shape[a] = s
        out.append(tuple(shape))
    return out
