"""Patch-based inference (MCUNetV2) on MobileNetV2 at 224x224 and 320x320, fp32 and int8 (QDQ).

Per case, the plan the planner picks for a budget of a quarter of the plain schedule's peak (least
extra compute among the plans that fit), and:
- planned peak reduction: plain peak / patched peak (MCUNetV2's 4-8x is the target);
- measured peak reduction: the process's peak-RSS growth during one inference, plain / patched,
  each in its own subprocess with ONNX Runtime's arena off (every tensor its own allocation, freed
  when it dies) and glibc told to map every block over 16 KB separately (MALLOC_MMAP_THRESHOLD_, so
  a freed tensor leaves RSS), peak reset just before the run (/proc/self/clear_refs);
- extra compute: MACs of the patch schedule / MACs of the plain one;
- latency: patched / plain, interleaved in one process (1 thread each).

    python benchmarks/patch_inference.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from _common import ROOT, interleaved_median_ms, result

_CHILD = r"""
import json, re, sys
import numpy as np
from edge_sdk.runtimes.memory import load_graph, plan_memory
from edge_sdk.runtimes.ort import OrtSession
from edge_sdk.runtimes.patch import HeadGraph, PatchedSession
path, mode, split, grid = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
graph, data = load_graph(path)
plan = plan_memory(graph)
make = lambda b: OrtSession(b, 1, arena=False)
if mode == "plain":
    sess = make(data)
else:
    hg = HeadGraph(graph, plan)
    sess = PatchedSession(graph, hg, hg.plan_patches(split, grid), make)
name = graph.inputs[0].name
x = np.random.default_rng(0).standard_normal((1, *plan.shapes[name][1:])).astype(np.float32)
sess.run({name: x})  # sessions, kernels and their caches warmed up
def status(key):
    return int(re.search(key + r":\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
before = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
sess.run({name: x})
print(json.dumps({"delta": status("VmHWM") - before}))
"""


def measured_delta(path: Path, mode: str, split: str = "", grid: int = 1, repeats: int = 3) -> float:
    deltas = []
    for _ in range(repeats):
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "16384", "MALLOC_TRIM_THRESHOLD_": "0"}
        out = subprocess.run([sys.executable, "-c", _CHILD, str(path), mode, split, str(grid)], capture_output=True,
                             text=True, check=True, cwd=ROOT, env=env)
        deltas.append(json.loads(out.stdout.strip().splitlines()[-1])["delta"])
    return float(np.median(deltas))


def main() -> None:
    import torch

    import edge_sdk
    from edge_sdk.runtimes.memory import human_bytes, load_graph, plan_memory
    from edge_sdk.runtimes.ort import OrtSession
    from edge_sdk.runtimes.patch import HeadGraph, PatchedSession
    from examples.models.mobilenet_v2 import build_model, with_batch_statistics

    model = with_batch_statistics(build_model())
    with tempfile.TemporaryDirectory() as tmp:
        for size in (224, 320):
            x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
            r = edge_sdk.convert(model, example_inputs=(x,), quantize=["none", "int8"], calibration="random",
                                 out=f"{tmp}/{size}", name=f"mnv2_{size}")
            for mode, label in (("none", "fp32"), ("int8", "int8")):
                path = Path(r.artifact(mode).path)
                graph, data = load_graph(path)
                plan = plan_memory(graph)
                hg = HeadGraph(graph, plan)
                pp = hg.search(plan.peak_bytes // 4)
                least = hg.search(None)
                name = f"patch_inference.mobilenet_v2_{size}.{label}"
                print(f"# {name}: {pp.describe()}; least peak possible: {human_bytes(least.peak)} "
                      f"({least.reduction:.2f}x, compute x{least.extra_compute:.2f})")
                result(f"{name}.planned_peak", pp.peak, "bytes", plan.peak_bytes)
                result(f"{name}.planned_peak_reduction", pp.reduction, "x", 4.0)
                plain_rss = measured_delta(path, "plain")
                patched_rss = measured_delta(path, "patched", pp.split, pp.grid)
                result(f"{name}.measured_rss_peak_reduction", plain_rss / max(patched_rss, 1), "x",
                       plan.peak_bytes / pp.peak)
                print(f"# {name}: measured RSS growth during inference: plain {human_bytes(plain_rss)}, "
                      f"patched {human_bytes(patched_rss)}")
                result(f"{name}.extra_compute", pp.extra_compute, "ratio", 1.0)
                plain = OrtSession(data, 1)
                patched = PatchedSession(graph, hg, pp, lambda b: OrtSession(b, 1))
                feed = {hg.input: np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)}
                t = interleaved_median_ms({"plain": lambda: plain.run(feed), "patched": lambda: patched.run(feed)},
                                          rounds=15, inner=5, warmup=3)
                result(f"{name}.latency", t["patched"], "ms", t["plain"])


if __name__ == "__main__":
    main()
