"""Input dims a .tflite artifact leaves resizable (``--input-shape x=1x3x?x?``; the search: ``converters/resizable.py``).

Two lowerings that hold the same operators, options and constants differ only in tensor shapes: those dims become
-1 in each tensor's ``shape_signature``, and LiteRT recomputes every shape from the inputs
(``resize_tensor_input``). Each candidate is also run in LiteRT, resized, against the model lowered at that size,
so a shape LiteRT computes differently is found here and not by the user. The step is recorded in the model's
metadata, and the runtime refuses sizes off it.
"""

from __future__ import annotations

import json
from typing import Callable

import numpy as np

from ...core.tflite import DYNAMIC_DIMS_KEY
from ...errors import ConversionError, UnsupportedOperatorError, shown
from ..resizable import find_step, lowering_failure
from .builder import TFLiteBuilder


def keep_dims_dynamic(builder: TFLiteBuilder, lower_at: Callable[[dict[str, tuple[int, ...]]], TFLiteBuilder],
                      shapes: dict[str, tuple[int, ...]], dynamic: dict[str, tuple[int, ...]]) -> int:
    """Mark ``builder``'s tensors resizable along the ``dynamic`` input dims and return the size step they hold
    at; ShapeError naming what bakes the size in when no step does. ``shapes`` are the ONNX inputs' built
    shapes; ``lower_at`` lowers the graph prepared at other ones."""

    def differs_at(other_shapes, step: int) -> str:
        try:
            other = lower_at(other_shapes)
        except (ConversionError, UnsupportedOperatorError) as e:
            return lowering_failure(e)
        reason = _difference(builder, other)
        if not reason:
            signatures = _signatures(builder, other)
            reason = _resized_run_differs(builder, other, signatures)
            if not reason:
                for t, sig in zip(builder.tensors, signatures):
                    t.signature = sig
        return reason

    step = find_step("tflite", shapes, dynamic, differs_at)
    stored = {}  # axes in the model's own input layout (NHWC I/O moves them)
    for i in builder.inputs:
        t = builder.tensors[i]
        stored[t.name] = {str(a): step for a, d in enumerate(t.signature or ()) if d == -1}
    builder.metadata[DYNAMIC_DIMS_KEY] = json.dumps({n: a for n, a in stored.items() if a}).encode()
    return step


def _difference(a: TFLiteBuilder, b: TFLiteBuilder) -> str:
    """Why ``b`` (the graph lowered at another size) is not ``a`` with other shapes; empty when it is."""
    if len(a.ops) != len(b.ops) or len(a.tensors) != len(b.tensors) or len(a.buffers) != len(b.buffers):
        return "the lowering emits other operators at another size"
    for x, y in zip(a.ops, b.ops):
        if (x.code, x.inputs, x.outputs, x.options_name) != (y.code, y.inputs, y.outputs, y.options_name) \
                or not _same_options(x.options, y.options):
            name = a.tensors[x.outputs[0]].name if x.outputs else "?"
            return f"the options of the operator producing '{shown(name)}' depend on the size"
    for x, y in zip(a.tensors, b.tensors):
        if (x.dtype, x.buffer, x.scales, x.zero_points, len(x.shape)) != (y.dtype, y.buffer, y.scales, y.zero_points,
                                                                          len(y.shape)):
            return f"tensor '{shown(x.name)}' changes type or rank with the size"
        if x.buffer and a.buffers[x.buffer] != b.buffers[y.buffer]:
            return f"constant '{shown(x.name)}' changes with the size"
    return ""


def _same_options(x: dict, y: dict) -> bool:
    return x.keys() == y.keys() and all(np.array_equal(np.asarray(x[k]), np.asarray(y[k])) for k in x)


def _signatures(a: TFLiteBuilder, b: TFLiteBuilder) -> list[tuple[int, ...] | None]:
    """Per tensor: its shape with -1 where the two lowerings disagree, or None when it does not change."""
    out = []
    for x, y in zip(a.tensors, b.tensors):
        differs = [p != q for p, q in zip(x.shape, y.shape)]
        out.append(tuple(-1 if d else s for s, d in zip(x.shape, differs)) if any(differs) else None)
    return out


def _resized_run_differs(a: TFLiteBuilder, b: TFLiteBuilder, signatures) -> str:
    """Run ``a`` (marked resizable) resized to ``b``'s input shapes, and ``b``, in LiteRT on the same data: the
    outputs must match (same operators, same constants). Empty when they do."""
    from ai_edge_litert.interpreter import Interpreter

    saved = [t.signature for t in a.tensors]
    for t, sig in zip(a.tensors, signatures):
        t.signature = sig
    try:
        resized, direct = Interpreter(model_content=a.finish()), Interpreter(model_content=b.finish())
    finally:
        for t, sig in zip(a.tensors, saved):
            t.signature = sig
    try:
        direct.allocate_tensors()
        rng = np.random.default_rng(0)
        feeds = []
        for d in direct.get_input_details():
            dtype = np.dtype(d["dtype"])
            feeds.append(rng.standard_normal(d["shape"]).astype(dtype) if dtype.kind == "f"
                         else np.zeros(d["shape"], dtype))
        for d, x in zip(resized.get_input_details(), feeds):
            resized.resize_tensor_input(d["index"], x.shape, strict=True)
        resized.allocate_tensors()
        for it in (resized, direct):
            for d, x in zip(it.get_input_details(), feeds):
                it.set_tensor(d["index"], x)
            it.invoke()
        for p, q in zip(resized.get_output_details(), direct.get_output_details()):
            got, want = resized.get_tensor(p["index"]), direct.get_tensor(q["index"])
            if got.shape != want.shape:
                return f"LiteRT computes output '{shown(p['name'])}' as {list(got.shape)} after resizing, not {list(want.shape)}"
            scale = float(np.max(np.abs(want.astype(np.float64)))) if want.size else 0.0
            if want.size and float(np.max(np.abs(got.astype(np.float64) - want))) > 1e-4 * max(scale, 1.0):
                return f"output '{shown(p['name'])}' of the resized model differs from the model built at that size"
    except (ValueError, RuntimeError) as e:
        return f"LiteRT cannot run the model resized ({' '.join(str(e).split())[:120]})"
    return ""
