"""Patch-based inference through the default path: ``edgelift.load(path, memory_budget=...)``, nothing tuned.

Models: MobileNetV2-224 fp32 and int8 (QDQ), and a U-Net segmenter at 960x960 (skip connections at every
level; examples/models/unet.py, trained by our code). Budget: a quarter of the plain schedule's planned
peak (MobileNetV2) or a sixth (U-Net). Each side runs in its own fresh process (1 thread): the plain side
is ``load(path)`` (ONNX Runtime's defaults), the budget side ``load(path, memory_budget=...)`` with its plan
already cached (planning is a one-time step, timed separately). Per model:
- planned peak reduction: plain planned peak / patched planned peak;
- measured peak reduction: activation memory = peak RSS during load's first three runs minus RSS after
  load (the high-water mark reset after load through /proc/self/clear_refs, so load's transients do not
  count), plain / budget;
- process peak RSS: budget / plain (the whole process, load included);
- extra compute (MACs) and latency (median of 30 runs after 3 warm-up runs; the least of three processes), budget / plain;
- load time with a cached plan, budget / plain; and the first (planning) load's time.

    python benchmarks/patch_inference.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, result

_CHILD = r"""
import json, re, sys, time
def rss(key):
    return int(re.search(key + r":\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
import numpy as np
import edgelift
path, budget = sys.argv[1], (None if sys.argv[2] == "none" else int(sys.argv[2]))
t0 = time.perf_counter()
m = edgelift.load(path, threads=1, memory_budget=budget)
load_s = time.perf_counter() - t0
x = np.random.default_rng(0).random((1, *m.inputs[0].shape[1:])).astype(np.float32)
load_peak = rss("VmHWM")
try:  # the peak during the runs, not load's transients: the high-water mark restarts at the RSS after load
    open("/proc/self/clear_refs", "w").write("5")
except OSError:
    pass
loaded = rss("VmRSS")
for _ in range(3):
    m.run(x)
activation = rss("VmHWM") - loaded
times = []
for _ in range(30):
    t = time.perf_counter()
    m.run(x)
    times.append(time.perf_counter() - t)
print(json.dumps({"load_s": load_s, "activation_bytes": activation, "process_peak_bytes": max(load_peak, rss("VmHWM")),
                  "latency_ms": float(np.median(times)) * 1e3}))
"""


def child(path: Path, budget: int | None, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(budget or "none")], capture_output=True,
                         text=True, cwd=ROOT, env=env)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1])
    return json.loads(out.stdout.strip().splitlines()[-1])


def models(tmp: Path) -> list[tuple[str, Path, int]]:
    import torch

    import edgelift
    from examples.models.mobilenet_v2 import build_model, with_batch_statistics
    from examples.models.unet import export, train

    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    out = []
    try:
        r = edgelift.convert(with_batch_statistics(build_model()), example_inputs=(x,), quantize=["none", "int8"],
                             calibration="random", out=tmp / "mnv2", name="mnv2", repair=False, keep_failed=True)
        paths = {a.mode: Path(a.path) for a in r.artifacts}
    except edgelift.errors.ParityError:  # random weights and ranges: int8 may miss its gate; kept, measured the same
        paths = {"none": tmp / "mnv2" / "mnv2.fp32.onnx", "int8": tmp / "mnv2" / "mnv2.int8.onnx"}
    out += [("mobilenet_v2_224.fp32", paths["none"], 4), ("mobilenet_v2_224.int8", paths["int8"], 4)]
    print("# training the U-Net (examples/models/unet.py) ...", flush=True)
    out.append(("unet_960.fp32", export(train(steps=120), tmp / "unet_960.onnx", 960), 6))
    return out


def main() -> None:
    from edgelift.runtimes.memory import human_bytes, load_graph, plan_memory

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "EDGELIFT_CACHE": str(tmp / "cache"), "PYTHONPATH": str(ROOT)}
        for name, path, div in models(tmp):
            plain_peak = plan_memory(load_graph(path)[0]).peak_bytes
            budget = plain_peak // div
            t0 = time.perf_counter()
            first = child(path, budget, env)  # plans (child process), measures, caches
            planning_s = time.perf_counter() - t0
            import edgelift

            plan = edgelift.load(path, memory_budget=budget).memory_plan
            print(f"# {name}: budget {human_bytes(budget)}; {plan.describe()}; first load (planning) {planning_s:.1f} s")
            plain, patched = [], []
            for _ in range(3):  # interleaved, fresh processes
                plain.append(child(path, None, env))
                patched.append(child(path, budget, env))
            best = lambda runs, k: min(r[k] for r in runs)  # noqa: E731  (least disturbed of the repeats)
            key = f"patch_inference.{name}"
            result(f"{key}.planned_peak_reduction", plan.reduction, "x", 1.0)
            result(f"{key}.measured_peak_reduction", best(plain, "activation_bytes") / max(1, best(patched, "activation_bytes")),
                   "x", 1.0)
            print(f"# {name}: activation memory measured: plain {human_bytes(best(plain, 'activation_bytes'))}, "
                  f"budget {human_bytes(best(patched, 'activation_bytes'))}")
            result(f"{key}.process_peak_rss", best(patched, "process_peak_bytes") / 1e6, "MB",
                   best(plain, "process_peak_bytes") / 1e6)
            result(f"{key}.extra_compute", plan.extra_compute, "ratio", 1.0)
            result(f"{key}.latency", best(patched, "latency_ms"), "ms", best(plain, "latency_ms"))
            result(f"{key}.load_time_cached_plan", best(patched, "load_s"), "s", best(plain, "load_s"))


if __name__ == "__main__":
    main()
