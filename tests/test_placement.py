"""Which execution provider ran each node, and how many partitions the graph was cut into, from ONNX Runtime's
own profiler trace.

No GPU was available to the session that wrote this (the task had no device machine), so there is no
CUDA/TensorRT trace capture yet: the placement code runs on a real CPU trace recorded here, and on that same
trace with some nodes' ``provider`` rewritten to CUDAExecutionProvider — the field and layout ORT writes for
every provider — to exercise the fallback and partition counting."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort

from edgelift.profilers.perop import from_ort_trace, read_ort_trace


def _real_trace(model, tmp_path) -> list[dict]:
    so = ort.SessionOptions()
    so.enable_profiling, so.profile_file_prefix = True, str(tmp_path / "ort")
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((1, 1, 8, 8), dtype=np.float32)
    for _ in range(4):
        sess.run(None, {"x": x})
    return read_ort_trace(sess.end_profiling())


def test_cpu_trace_places_every_node_on_the_cpu(digits_result, tmp_path):
    events = _real_trace(digits_result.artifact("int8").path, tmp_path)
    kernels = {e["name"] for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")}
    prof = from_ort_trace(events)
    assert [(p.provider, p.nodes) for p in prof.providers] == [("CPUExecutionProvider", len(kernels))]
    assert prof.partitions == 1 and abs(prof.providers[0].percent - 100.0) < 1e-6
    assert all(n.provider == "CPUExecutionProvider" for n in prof.top_nodes)


def test_gpu_fallback_nodes_and_partitions(digits_result, tmp_path):
    events = _real_trace(digits_result.artifact("int8").path, tmp_path)
    order = sorted({int(e["args"]["node_index"]) for e in events
                    if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")})
    on_cpu = {order[len(order) // 2]}  # one node in the middle falls back: GPU | CPU | GPU -> 3 partitions
    for e in events:
        if e.get("cat") == "Node" and "provider" in e.get("args", {}):
            if int(e["args"]["node_index"]) not in on_cpu:
                e["args"]["provider"] = "CUDAExecutionProvider"
    prof = from_ort_trace(json.loads(json.dumps(events)))
    shares = {p.provider: p.nodes for p in prof.providers}
    assert shares == {"CUDAExecutionProvider": len(order) - 1, "CPUExecutionProvider": 1}
    assert prof.partitions == 3
    assert abs(sum(p.percent for p in prof.providers) - 100.0) < 1e-6
