"""edge-sdk's ONNX -> TFLite lowering against litert-torch on MobileNetV2-224 (plain torch, seed 0).

litert-torch (~1.1 GB with jax) is installed in a throwaway venv made by this script under
.cache/venv-litert-torch — it is not a project dependency. Each converter runs in a fresh process
(imports included, as a user would run it); the .tflite files are then timed in LiteRT side by side.

    python benchmarks/tflite_convert.py [--threads 2]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import ROOT, interleaved_median_ms, result

VENV = ROOT / ".cache" / "venv-litert-torch"
LITERT_TORCH = "litert-torch==0.10.0"

MODEL = f"""
import sys, torch
sys.path.insert(0, {str(ROOT)!r})
from examples.models.mobilenet_v2 import build_model
model, x = build_model(), torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
"""

EDGE = MODEL + """
import edge_sdk
r = edge_sdk.convert(model, example_inputs=(x,), to="tflite", out=sys.argv[1], name="mobilenet_v2")
"""

EDGE_FAST = MODEL + """
import edge_sdk
r = edge_sdk.convert(model, example_inputs=(x,), to="tflite", out=sys.argv[1] + "/fast", name="mobilenet_v2",
                     exporter="torchscript")
"""

LITERT = MODEL + """
import litert_torch
litert_torch.convert(model, (x,)).export(sys.argv[1] + "/mobilenet_v2.litert.tflite")
"""


def litert_venv() -> Path:
    python = VENV / "bin" / "python"
    if not (VENV / ".ready").exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, "torch==2.13.0"], check=True)  # the same torch: same weights from seed 0
        subprocess.run([*pip, LITERT_TORCH], check=True)
        (VENV / ".ready").write_text(LITERT_TORCH)
    return python


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{cmd[0]} failed:\n{r.stderr[-3000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from ai_edge_litert.interpreter import Interpreter

    other = litert_venv()
    with tempfile.TemporaryDirectory() as tmp:
        t_edge = timed([sys.executable, "-c", EDGE, tmp])
        t_fast = timed([sys.executable, "-c", EDGE_FAST, tmp])
        t_lite = timed([str(other), "-c", LITERT, tmp])
        ours, theirs = Path(tmp) / "mobilenet_v2.fp32.tflite", Path(tmp) / "mobilenet_v2.litert.tflite"
        result("tflite_convert.mobilenet_v2.fp32.convert_wall.dynamo_exporter", t_edge, "s", t_lite)
        result("tflite_convert.mobilenet_v2.fp32.convert_wall.torchscript_exporter", t_fast, "s", t_lite)
        result("tflite_convert.mobilenet_v2.fp32.size", ours.stat().st_size, "bytes", theirs.stat().st_size)

        def interpreter(path: Path):
            it = Interpreter(model_path=str(path), num_threads=args.threads)
            it.allocate_tensors()
            return it

        its = {"edge": interpreter(ours), "litert": interpreter(theirs)}
        x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
        outs = {}

        def runner(name):
            it = its[name]
            i, o = it.get_input_details()[0], it.get_output_details()[0]
            feed = x if tuple(i["shape"]) == x.shape else x.transpose(0, 2, 3, 1)

            def run():
                it.set_tensor(i["index"], feed)
                it.invoke()
                outs[name] = it.get_tensor(o["index"])
            return run

        t = interleaved_median_ms({k: runner(k) for k in its}, rounds=40, inner=10)
        result("tflite_convert.mobilenet_v2.fp32.latency", t["edge"], "ms", t["litert"])
        diff = float(np.max(np.abs(outs["edge"] - outs["litert"])))
        scale = float(np.max(np.abs(outs["litert"])))
        result("tflite_convert.mobilenet_v2.fp32.max_abs_diff_vs_output_max", diff, "abs", scale)
        ops = {k: [op["op_name"] for op in it._get_ops_details()] for k, it in its.items()}
        for k in ops:
            print(f"# {k}: {len(ops[k])} ops, TRANSPOSE={ops[k].count('TRANSPOSE')}, PAD={ops[k].count('PAD')}")


if __name__ == "__main__":
    main()
