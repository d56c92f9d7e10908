"""edgelift's ONNX -> TFLite lowering against litert-torch on MobileNetV2-224 (plain torch, seed 0).

litert-torch (~1.1 GB with jax) and ai-edge-quantizer (its full-integer int8 path) are installed in a
throwaway venv made by this script under .cache/venv-litert-torch — not project dependencies. Each
converter runs in a fresh process (imports included, as a user would run it); the .tflite files are
then timed in LiteRT side by side. Both int8 models are calibrated on the same random inputs and
have int8 inputs/outputs (ai-edge-quantizer's static recipe gives that; ours takes --int8-io).

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
import edgelift
exporter, mode = sys.argv[2], sys.argv[3]
r = edgelift.convert(model, example_inputs=(x,), to="tflite", quantize=mode, out=sys.argv[1] + "/" + exporter,
                     name="mobilenet_v2", exporter=exporter, calibration=sys.argv[1] + "/calib.npz",
                     int8_io=mode == "int8")  # int8 I/O, as ai-edge-quantizer's static recipe gives
"""

LITERT = MODEL + """
import litert_torch
litert_torch.convert(model, (x,)).export(sys.argv[1] + "/mobilenet_v2.litert.tflite")
"""

# ai-edge-quantizer's static int8 recipe (int8 weights and activations) on litert-torch's fp32 file.
LITERT_INT8 = """
import sys, numpy as np
from ai_edge_litert.interpreter import Interpreter
from ai_edge_quantizer import quantizer, recipe
src = sys.argv[1] + "/mobilenet_v2.litert.tflite"
sig = Interpreter(model_path=src).get_signature_list()
key = next(iter(sig)); name = sig[key]["inputs"][0]
calib = np.load(sys.argv[1] + "/calib.npz")["x"]
q = quantizer.Quantizer(src, recipe.static_wi8_ai8())
res = q.calibrate({key: [{name: c[None]} for c in calib]}, num_threads=2)
q.quantize(res, enable_progress_report=False).export_model(sys.argv[1] + "/mobilenet_v2.litert.int8.tflite")
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
    ap.add_argument("--calibration", type=int, default=8, help="random calibration samples for int8")
    args = ap.parse_args()

    other = litert_venv()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        calib = np.random.default_rng(2).standard_normal((args.calibration, 3, 224, 224)).astype(np.float32)
        np.savez(d / "calib.npz", x=calib)
        t_edge = timed([sys.executable, "-c", EDGE, tmp, "auto", "none"])
        t_dynamo = timed([sys.executable, "-c", EDGE, tmp, "dynamo", "none"])
        t_lite = timed([str(other), "-c", LITERT, tmp])
        t_edge8 = timed([sys.executable, "-c", EDGE, tmp, "auto", "int8"])
        t_lite8 = timed([str(other), "-c", LITERT_INT8, tmp]) + t_lite
        files = {
            "fp32": (d / "auto/mobilenet_v2.fp32.tflite", d / "mobilenet_v2.litert.tflite"),
            "int8": (d / "auto/mobilenet_v2.int8.tflite", d / "mobilenet_v2.litert.int8.tflite"),
        }
        result("tflite_convert.mobilenet_v2.fp32.convert_wall", t_edge, "s", t_lite)
        result("tflite_convert.mobilenet_v2.fp32.convert_wall.dynamo_exporter", t_dynamo, "s", t_lite)
        result("tflite_convert.mobilenet_v2.int8.convert_wall", t_edge8, "s", t_lite8)
        for mode, (ours, theirs) in files.items():
            result(f"tflite_convert.mobilenet_v2.{mode}.size", ours.stat().st_size, "bytes", theirs.stat().st_size)
        x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
        for mode, (ours, theirs) in files.items():
            compare_in_litert(mode, {"edge": ours, "litert": theirs}, x, args.threads)


def compare_in_litert(mode: str, paths: dict[str, Path], x: np.ndarray, threads: int) -> None:
    from ai_edge_litert.interpreter import Interpreter

    its = {}
    for k, p in paths.items():
        its[k] = Interpreter(model_path=str(p), num_threads=threads)
        its[k].allocate_tensors()
    outs = {}

    def runner(name):
        it = its[name]
        i, o = it.get_input_details()[0], it.get_output_details()[0]
        feed = x if tuple(i["shape"]) == x.shape else x.transpose(0, 2, 3, 1)
        if i["dtype"] == np.int8:
            (s,), (z,) = i["quantization_parameters"]["scales"], i["quantization_parameters"]["zero_points"]
            feed = np.clip(np.round(feed / s) + z, -128, 127).astype(np.int8)

        def run():
            it.set_tensor(i["index"], feed)
            it.invoke()
            outs[name] = it.get_tensor(o["index"])
        return run

    t = interleaved_median_ms({k: runner(k) for k in its}, rounds=150, inner=10)
    result(f"tflite_convert.mobilenet_v2.{mode}.latency", t["edge"], "ms", t["litert"])
    for k, it in its.items():  # int8 outputs back to real values
        o = it.get_output_details()[0]
        if o["dtype"] == np.int8:
            (s,), (z,) = o["quantization_parameters"]["scales"], o["quantization_parameters"]["zero_points"]
            outs[k] = (outs[k].astype(np.float32) - z) * s
    diff = float(np.max(np.abs(outs["edge"] - outs["litert"])))
    scale = float(np.max(np.abs(outs["litert"])))
    result(f"tflite_convert.mobilenet_v2.{mode}.max_abs_diff_vs_output_max", diff, "abs", scale)
    ops = {k: [op["op_name"] for op in it._get_ops_details()] for k, it in its.items()}
    for k in ops:
        print(f"# {mode} {k}: {len(ops[k])} ops, TRANSPOSE={ops[k].count('TRANSPOSE')}, "
              f"PAD={ops[k].count('PAD')}, QUANTIZE={ops[k].count('QUANTIZE')}, "
              f"DEQUANTIZE={ops[k].count('DEQUANTIZE')}")


if __name__ == "__main__":
    main()
