"""Calibration for full-integer TFLite: the min/max of every float tensor of the prepared graph,
measured by running that same graph in ONNX Runtime with its intermediate tensors exposed."""

from __future__ import annotations

import copy

import numpy as np

from ...core.tensors import InputSet
from ...runtimes.base import fixed_batch, iter_batches
from ...runtimes.ort import OrtSession
from ..graph import Graph


def calibrate_ranges(graph: Graph, data: InputSet) -> dict[str, tuple[float, float]]:
    from onnx import helper

    model = copy.deepcopy(graph.model)
    have = {o.name for o in model.graph.output}
    for name, dt in graph.dtypes.items():
        if dt == np.float32 and name not in graph.constants and name not in have:
            model.graph.output.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(dt), None))
    session = OrtSession(model.SerializeToString())
    ranges: dict[str, tuple[float, float]] = {}
    for feeds, _ in iter_batches(data, fixed_batch(session.inputs, data.unbatched)):
        for name, value in zip(session._output_names, session.session.run(None, feeds)):
            if value.dtype != np.float32 or value.size == 0:
                continue
            lo, hi = float(value.min()), float(value.max())
            old = ranges.get(name)
            ranges[name] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))
    for name in graph.inputs:  # inputs may have no node output of their own
        if name in data.arrays and name not in ranges:
            ranges[name] = (float(data.arrays[name].min()), float(data.arrays[name].max()))
    return ranges
