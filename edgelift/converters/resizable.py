"""Input dims an artifact leaves resizable (``--input-shape x=1x3x?x?``), for lowering targets that fold shapes.

The lowerings work on static shapes, so a resizable dim is found, not assumed: the target lowers the graph again
with every kept dim grown by a step and says whether the two results differ in anything but shapes (TFLite:
``tflite/dynamic.py``; Core ML: ``coreml/dynamic.py``). Where a constant changes with the size (explicit padding
that depends on the size's parity, a reshape target) the lowering has baked the size in, and the next step is
tried: 1, 2, 4, ... up to the largest power of two dividing every built size. The smallest step that holds is the
one sizes may change by; other sizes would run with the built size's constants (wrong output, no error).
"""

from __future__ import annotations

from typing import Callable

from ..errors import ShapeError, shown

MAX_STEP = 256

Shapes = dict[str, tuple[int, ...]]


def grown(shapes: Shapes, dynamic: dict[str, tuple[int, ...]], by: int) -> Shapes:
    """``shapes`` with every dynamic dim grown by ``by``."""
    return {n: tuple(d + by if i in dynamic.get(n, ()) else d for i, d in enumerate(s)) for n, s in shapes.items()}


def find_step(target: str, shapes: Shapes, dynamic: dict[str, tuple[int, ...]],
              differs_at: Callable[[Shapes, int], str]) -> int:
    """The smallest step at which ``differs_at(grown shapes, step)`` finds nothing ("" = the lowering holds);
    ShapeError with the last reason when none does."""
    sizes = [shapes[name][axis] for name, axes in dynamic.items() for axis in axes]
    limit = min([MAX_STEP] + [s & -s for s in sizes])  # the largest power of two dividing every built size
    reason, step = "", 1
    while step <= limit:
        reason = differs_at(grown(shapes, dynamic, step), step)
        if not reason:
            return step
        step *= 2
    dims = ", ".join(f"'{shown(n)}' dim {a}" for n, axes in dynamic.items() for a in axes)
    raise ShapeError(f"--to {target} cannot keep {dims} dynamic: {reason}; give {'it' if len(sizes) == 1 else 'them'} "
                     "a size in --input-shape")


def lowering_failure(e: Exception) -> str:
    """Why the graph did not lower at another size, for the refusal's reason."""
    from ..errors import UnsupportedOperatorError

    if isinstance(e, UnsupportedOperatorError):
        named = ", ".join(f"'{shown(n, 40)}' ({shown(op.split(' ')[0], 20)})" for n, op in e.nodes[:3]) or "a node"
        return f"node {named} lowers only at the built size"
    return f"the graph does not prepare at another size ({shown(' '.join(str(e).split()), 100)})"
