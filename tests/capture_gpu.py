"""Record the GPU captures that tests/test_gpu.py replays: run this once on a machine with an NVIDIA GPU.

    pip install onnxruntime-gpu nvidia-ml-py      # in the project's venv, instead of onnxruntime
    python tests/capture_gpu.py tests/data/captures/gpu

It trains nothing and downloads nothing: it builds a small conv net with ONNX's helper (fixed seed),
profiles it with ``--ep cuda --power nvml`` through the public API, and writes next to each other:

- ``model.onnx``: the graph profiled;
- ``ort-cuda-trace.json``: ONNX Runtime's own profiler trace of the CUDA session (provider per node);
- ``profile-cuda-nvml.json``: the edgelift report (power above idle, energy per inference, placement);
- ``nvidia-smi.txt``: ``nvidia-smi -q`` (driver, board, power limits) as provenance.

Not a test (no ``test_`` prefix): it needs hardware the test machines lack. The files it writes are
real captures; commit them with a line in tests/data/captures/SOURCES.md naming the GPU and driver.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np


def build_model(path: Path) -> Path:
    """Conv-ReLU x3 + global pool + Gemm on 1x3x224x224: enough work for a GPU to draw measurable power."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, prev, ch = [], [], "x", 3
    for i, out_ch in enumerate((32, 64, 128)):
        w = numpy_helper.from_array((rng.standard_normal((out_ch, ch, 3, 3)) * 0.1).astype(np.float32), f"w{i}")
        inits.append(w)
        nodes += [helper.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1], name=f"conv{i}"),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
        prev, ch = f"r{i}", out_ch
    inits.append(numpy_helper.from_array((rng.standard_normal((10, ch)) * 0.1).astype(np.float32), "fc"))
    nodes += [helper.make_node("GlobalAveragePool", [prev], ["g"], name="pool"),
              helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
              helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1, name="fc")]
    graph = helper.make_graph(nodes, "gpu-capture", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 224, 224])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def main(out: Path) -> None:
    import onnxruntime as ort

    from edgelift.profilers.profile import ProfileOptions, profile

    out.mkdir(parents=True, exist_ok=True)
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        sys.exit(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider: pip install onnxruntime-gpu")
    model = build_model(out / "model.onnx")
    so = ort.SessionOptions()
    so.enable_profiling, so.profile_file_prefix = True, str(out / "ort")
    sess = ort.InferenceSession(str(model), so, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    x = np.random.default_rng(1).random((1, 3, 224, 224), dtype=np.float32)
    for _ in range(20):
        sess.run(None, {"x": x})
    shutil.move(sess.end_profiling(), out / "ort-cuda-trace.json")
    rep = profile(model, ProfileOptions(runs=200, warmup=20, min_time_s=5.0, idle_s=2.0, power="nvml",
                                        load_options={"providers": ["cuda"]}))
    rep.write_json(out / "profile-cuda-nvml.json")
    smi = shutil.which("nvidia-smi")
    if smi:
        (out / "nvidia-smi.txt").write_text(subprocess.run([smi, "-q"], capture_output=True, text=True).stdout)
    p = rep.runs[0]["power"]
    print(json.dumps({"power": {k: p.get(k) for k in ("source", "idle_w", "avg_w", "energy_per_inference_above_idle_j")},
                      "placement": (rep.runs[0].get("ops") or {}).get("providers")}, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "tests/data/captures/gpu"))
