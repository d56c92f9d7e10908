"""Size and latency of int8 / int4 ONNX artifacts against fp32 (ONNX Runtime, batch 1).

Models: the digits CNN (trained by examples/digits) and MobileNetV2-224 (plain torch, random
weights, int8 calibrated on random inputs: fine for latency and size, not for accuracy).
Latencies are medians of interleaved rounds in one process; read the ratios, not the times.

    python benchmarks/onnx_quant.py [--threads N]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from _common import interleaved_median_ms, result

import edgelift
from edgelift.runtimes.ort import OrtSession

MODES = ("none", "int8", "int4")


def bench(tag: str, result_obj, threads: int | None) -> None:
    sessions = {a.mode: OrtSession(a.path, threads=threads) for a in result_obj.artifacts}
    spec = sessions["none"].inputs[0]
    shape = tuple(1 if not isinstance(d, int) else d for d in spec.shape)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    times = interleaved_median_ms({m: (lambda s=s: s.run({spec.name: x})) for m, s in sessions.items()})
    fp32 = result_obj.artifact("none")
    for mode in ("int8", "int4"):
        a = result_obj.artifact(mode)
        result(f"onnx_quant.{tag}.{mode}.size", a.size_bytes, "bytes", fp32.size_bytes)
        result(f"onnx_quant.{tag}.{mode}.latency_b1", times[mode], "ms", times["none"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    import torch

    from examples.digits.train import train as train_digits
    from examples.models.mobilenet_v2 import build_model

    art = Path(__file__).resolve().parent.parent / "examples" / "digits" / "artifacts"
    train_digits(art)
    with tempfile.TemporaryDirectory() as tmp:
        digits = edgelift.convert(art / "digits.pt2", quantize=MODES, calibration=art / "calib.npz",
                                  validation=art / "val.npz", out=Path(tmp) / "digits")
        bench("digits_cnn", digits, args.threads)
        mnv2 = edgelift.convert(build_model(), example_inputs=(torch.randn(1, 3, 224, 224),),
                                quantize=MODES, calibration="random", out=Path(tmp) / "mnv2",
                                name="mobilenet_v2")
        bench("mobilenet_v2_224", mnv2, args.threads)


if __name__ == "__main__":
    main()
