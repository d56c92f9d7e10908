"""What each model input is, settled before anything runs.

Exported graphs name their free dims (``batch``, ``height``, ``unk__42``) or leave them blank. A dim is
never given a size silently: ``--input-shape`` comes first (for every source kind; ``?`` keeps a dim
dynamic), then the shapes of the calibration / validation arrays, and a dim neither gives is refused
with one line listing every such dim. Dims named alike share one size (``sequence`` in ``input_ids`` and
``attention_mask``). Per input we also settle whether it has a batch axis (``core.tensors.batch_axes``,
``--batch-axis name=-``) and the value range random data draws from (``--input-range name=lo..hi``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..core.tensors import Dim, TensorSpec, batch_axes
from ..errors import InvalidOptionError, ShapeError, shown

KEEP_DYNAMIC = None  # a '?' in --input-shape
KEPT = "--input-shape (?)"  # the origin recorded for a dim '?' keeps dynamic


@dataclass(frozen=True)
class ResolvedInput:
    name: str
    dtype: str
    declared: tuple[Dim, ...]  # as the graph states it
    artifact_shape: tuple[Dim, ...]  # what artifacts declare: ints, or the dim's name where it stays dynamic
    data_shape: tuple[Dim, ...]  # sizes test data is made / checked with (a batch axis may stay symbolic)
    batch_axis: int | None
    origins: dict[int, str] = field(default_factory=dict)  # per resolved dim: "--input-shape" or a data file

    def artifact_spec(self) -> TensorSpec:
        return TensorSpec(self.name, self.artifact_shape, self.dtype)

    def data_spec(self) -> TensorSpec:
        return TensorSpec(self.name, self.data_shape, self.dtype)


@dataclass
class Signature:
    inputs: list[ResolvedInput]
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def unbatched(self) -> frozenset[str]:
        return frozenset(r.name for r in self.inputs if r.batch_axis is None)

    def data_specs(self, static: bool) -> list[TensorSpec]:
        """Specs data must match: the sizes the artifacts are built for when a target has static shapes."""
        return [r.data_spec() if static else r.artifact_spec() for r in self.inputs]

    def pinned(self) -> dict[str, tuple[Dim, ...]]:
        """Inputs whose declared shape ``--input-shape`` changed: their new artifact shapes."""
        return {r.name: r.artifact_shape for r in self.inputs if r.artifact_shape != r.declared}

    def dynamic_axes(self) -> dict[str, tuple[int, ...]]:
        """Per input, the dims ``?`` keeps dynamic (the data gives the size an artifact is built and checked at)."""
        out = {r.name: tuple(sorted(i for i, o in r.origins.items() if o == KEPT)) for r in self.inputs}
        return {k: v for k, v in out.items() if v}

    def static_shapes(self, target: str, keep_dynamic: bool = False) -> dict[str, tuple[int, ...]]:
        """Every input's shape for a lowering target; a batch axis left symbolic becomes 1 (the runtime pads
        to it). A dim the user asked to keep dynamic takes its data's size when the target can resize it
        later (``keep_dynamic``: TFLite's shape_signature), and is refused, saying so, when it cannot."""
        out = {}
        for r in self.inputs:
            dims = []
            for i, (a, d) in enumerate(zip(r.artifact_shape, r.data_shape)):
                if isinstance(a, int):
                    dims.append(a)
                elif i == r.batch_axis:
                    dims.append(1)
                elif isinstance(d, int) and (keep_dynamic or "--input-shape" not in r.origins.get(i, "")):
                    dims.append(d)
                else:
                    raise ShapeError(f"--to {target} builds static shapes: input '{shown(r.name)}' dim {i} cannot "
                                     "stay dynamic ('?'); give it a size in --input-shape")
            out[r.name] = tuple(dims)
        return out

    def describe(self) -> dict[str, list]:
        return {r.name: ["?" if d is None else d for d in r.artifact_shape] for r in self.inputs}


def parse_input_shape(text: str) -> tuple[str, tuple[int | None, ...]]:
    """``NAME=1x3x640x640``; ``?`` for a dim that stays dynamic (``NAME=?x3x?x?``)."""
    name, sep, dims = text.partition("=")
    try:
        if not sep or not name:
            raise ValueError
        shape = tuple(KEEP_DYNAMIC if d.strip() == "?" else int(d) for d in dims.replace(",", "x").split("x")) \
            if dims.strip() else ()
        if any(d is not None and d <= 0 for d in shape):
            raise ValueError
    except ValueError:
        raise InvalidOptionError(f"bad --input-shape '{shown(text)}': write NAME=1x3x224x224 (? keeps a dim "
                                 "dynamic, NAME= for a scalar)") from None
    return name, shape


def parse_batch_axis(text: str) -> tuple[str, int | None]:
    """``NAME=-`` (the input has no batch axis: fed whole) or ``NAME=0``."""
    name, sep, axis = text.partition("=")
    if not sep or not name or axis.strip() not in ("-", "0"):
        raise InvalidOptionError(f"bad --batch-axis '{shown(text)}': write NAME=- (no batch axis) or NAME=0")
    return name, None if axis.strip() == "-" else 0


def parse_input_range(text: str) -> tuple[str, tuple[float, float]]:
    """``NAME=LO..HI`` (inclusive) for random data, e.g. ``sr=16000..16000`` or ``ids=0..49151``."""
    name, sep, rng = text.partition("=")
    lo, dots, hi = rng.partition("..")
    try:
        if not sep or not name or not dots:
            raise ValueError
        lo_v, hi_v = float(lo), float(hi)
        if not (np.isfinite(lo_v) and np.isfinite(hi_v)) or lo_v > hi_v:
            raise ValueError
    except ValueError:
        raise InvalidOptionError(f"bad --input-range '{shown(text)}': write NAME=LO..HI with LO <= HI") from None
    return name, (lo_v, hi_v)


def _check_names(option: str, given, specs: list[TensorSpec]) -> None:
    names = {s.name for s in specs}
    unknown = [k for k in given if k not in names]
    if unknown:
        raise InvalidOptionError(f"{option} names {', '.join(repr(shown(k)) for k in unknown)}, which the model "
                                 f"has no input of; its inputs: {', '.join(shown(n) for n in sorted(names))}")


def resolve_signature(
    specs: list[TensorSpec],
    *,
    input_shapes: dict[str, tuple[int | None, ...]] | None = None,
    batch_axis: dict[str, int | None] | None = None,
    input_ranges: dict[str, tuple[float, float]] | None = None,
    data: list[tuple[str, dict[str, np.ndarray]]] = (),
) -> Signature:
    """Settle every input's shape, batch axis and random-data range (see the module docstring)."""
    input_shapes, batch_axis, input_ranges = input_shapes or {}, batch_axis or {}, input_ranges or {}
    _check_names("--input-shape", input_shapes, specs)
    _check_names("--batch-axis", batch_axis, specs)
    _check_names("--input-range", input_ranges, specs)
    axes = batch_axes(specs, batch_axis)
    named: dict[str, tuple[int, str]] = {}  # a symbolic dim's name -> (size, where it came from)

    # 1. --input-shape
    artifact: dict[str, list[Dim]] = {}
    kept: set[tuple[str, int]] = set()
    origins: dict[str, dict[int, str]] = {s.name: {} for s in specs}
    for s in specs:
        dims: list[Dim] = list(s.shape)
        if s.name in input_shapes:
            given = input_shapes[s.name]
            if len(given) != len(s.shape):
                raise ShapeError(f"--input-shape gives '{shown(s.name)}' {len(given)} dims but the model's input has "
                                 f"{len(s.shape)}: {_show(s.shape)}")
            for i, (g, d) in enumerate(zip(given, s.shape)):
                if g is KEEP_DYNAMIC:
                    if isinstance(d, int):
                        raise ShapeError(f"--input-shape asks to keep '{shown(s.name)}' dim {i} dynamic, but the model "
                                         f"fixes it to {d}")
                    kept.add((s.name, i))
                    dims[i] = d if isinstance(d, str) and d else f"{s.name}_dim{i}"
                    origins[s.name][i] = KEPT
                    continue
                if isinstance(d, int) and d != g:
                    raise ShapeError(f"--input-shape gives '{shown(s.name)}' dim {i} size {g}, but the model fixes it "
                                     f"to {d}: {_show(s.shape)}")
                dims[i] = g
                if not isinstance(d, int):
                    origins[s.name][i] = "--input-shape"
                    if isinstance(d, str) and d:
                        named.setdefault(d, (g, "--input-shape"))
        artifact[s.name] = dims

    # 2. the data's shapes
    sizes: dict[str, list[Dim]] = {s.name: list(artifact[s.name]) for s in specs}
    for origin, arrays in data:
        for s in specs:
            a = arrays.get(s.name)
            if a is None:
                continue
            per_sample = a.shape if (axes[s.name] is None and a.ndim == len(s.shape)) else a.shape[1:]
            axis_offset = 0 if axes[s.name] is None else 1
            if len(per_sample) != len(s.shape) - axis_offset:
                continue  # validate_inputs reports the rank mismatch with its own message
            for i, d in enumerate(s.shape):
                if isinstance(sizes[s.name][i], int) or i == axes[s.name]:
                    continue
                size = int(per_sample[i - axis_offset])
                sizes[s.name][i] = size
                origins[s.name].setdefault(i, origin)
                if isinstance(d, str) and d:
                    named.setdefault(d, (size, origin))

    # 3. same-named dims share a size; what is left has none
    missing = []
    for s in specs:
        for i, d in enumerate(s.shape):
            if isinstance(sizes[s.name][i], int) or i == axes[s.name]:
                continue
            if isinstance(d, str) and d in named:
                sizes[s.name][i] = named[d][0]
                origins[s.name].setdefault(i, named[d][1])
                if (s.name, i) not in kept and "--input-shape" == named[d][1]:
                    artifact[s.name][i] = named[d][0]
            else:
                missing.append(f"'{shown(s.name)}' dim {i}" + (f" ({shown(d)})" if d else ""))
    if missing:
        example = next(s for s in specs if any(not isinstance(x, int) for x in sizes[s.name]))
        hint = "x".join(str(x) if isinstance(x, int) else ("1" if i == axes[example.name] else "N")
                        for i, x in enumerate(sizes[example.name]))
        raise ShapeError(f"the model's input dims {', '.join(missing)} are symbolic and nothing gives them a size: pass "
                         f"--input-shape {shown(example.name)}={hint} (? keeps a dim dynamic) or --calibration/"
                         "--validation data of the real shape")
    resolved = []
    for s in specs:
        art = tuple(artifact[s.name])
        data_shape = tuple(sizes[s.name])
        resolved.append(ResolvedInput(s.name, s.dtype, s.shape, art, data_shape, axes[s.name], origins[s.name]))
    return Signature(resolved, dict(input_ranges))


def pin_input_dims(model, pinned: dict[str, tuple[Dim, ...]]) -> None:
    """Write the shapes ``--input-shape`` fixed into the ONNX graph's inputs (in place)."""
    for v in model.graph.input:
        if v.name not in pinned:
            continue
        for d, size in zip(v.type.tensor_type.shape.dim, pinned[v.name]):
            if isinstance(size, int) and (not d.HasField("dim_value") or d.dim_value < 0):
                d.Clear()
                d.dim_value = size


def _show(shape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
