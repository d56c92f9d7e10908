"""Real models other projects exported (examples/models/corpus.py), through every target a user would pick.

Per corpus model: ONNX int8/fp16, TFLite none/fp16/int8 and Core ML fp16, each held to its parity gate on
validation data of the model's kind (16 samples; calibration on 16 others). Prints, per model,

    RESULT real_models.<model>.onnx_int8.cosine  value=<after mixed-precision repair> baseline=<before>
    RESULT real_models.<model>.onnx_int8.latency value=<repaired int8 ms> baseline=<fp32 ms>   (ONNX Runtime)

and a Markdown table of every case (the README's corpus table). Failed artifacts are kept (keep_failed) so the
table shows how far below the gate they landed. Latency: batch 1, medians of interleaved rounds in one process,
``--threads`` intra-op threads (default 2); run it alone on the machine.

    python benchmarks/real_models.py [--models ppocr_det,nudenet] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
from _common import interleaved_median_ms, result

from edgelift import convert
from edgelift.core.tensors import batch_axes
from edgelift.runtimes.ort import OrtSession
from edgelift.errors import EdgeError, ParityError
from examples.models.corpus import CORPUS

CASES = [("onnx", "int8"), ("onnx", "fp16"), ("tflite", "none"), ("tflite", "fp16"), ("tflite", "int8"),
         ("coreml", "fp16")]


def run_case(path: Path, target: str, mode: str, calib: Path, val: Path, out: Path):
    """(conversion result or None, outcome text)."""
    try:
        r = convert(str(path), to=target, quantize=mode, calibration=str(calib), validation=str(val), out=out,
                    keep_failed=True)
        return r, "passes"
    except ParityError as e:
        return e.result, "below gate (exit 3)"
    except EdgeError as e:
        return None, f"refused (exit 2): {str(e)[:110]}"


def latency_ms(paths: dict[str, str], feeds: dict[str, np.ndarray], threads: int) -> dict[str, float]:
    sessions = {k: OrtSession(p, threads=threads) for k, p in paths.items()}
    return interleaved_median_ms({k: (lambda s=s: s.run(feeds)) for k, s in sessions.items()}, rounds=15, inner=10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default=",".join(CORPUS))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    rows = []
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="edge-real-") as tmp:
        tmp = Path(tmp)
        for key in args.models.split(","):
            m = CORPUS[key]
            path = m.fetch()
            calib = m.write_data(tmp / f"{key}.calib.npz", 16, 0)
            val = m.write_data(tmp / f"{key}.val.npz", 16, 1)
            int8 = None
            for target, mode in CASES:
                r, outcome = run_case(path, target, mode, calib, val, tmp / f"{key}-{target}-{mode}")
                a = r.artifacts[0] if r is not None else None
                if (target, mode) == ("onnx", "int8"):
                    int8 = a
                rows.append((key, target, mode, outcome, a))
                print(f"{key} {target} {mode}: {outcome}"
                      + (f" cosine {a.parity.primary.cosine_similarity:.5f}" if a else ""), flush=True)
            if int8 is None or not int8.path:
                continue
            repair = int8.quantization.details.get("repair")
            after = int8.parity.primary.cosine_similarity
            before = repair["cosine_before"] if repair else after
            result(f"real_models.{key}.onnx_int8.cosine", after, "cosine", before)
            fp32 = convert(str(path), to="onnx", quantize="none", validation=str(val), out=tmp / f"{key}-fp32")
            axes = batch_axes(OrtSession(fp32.artifacts[0].path).inputs)  # state/scalar inputs are fed whole
            feeds = {k: v[:1] if axes[k] == 0 else v for k, v in np.load(val).items()}
            t = latency_ms({"fp32": fp32.artifacts[0].path, "int8": int8.path}, feeds, args.threads)
            result(f"real_models.{key}.onnx_int8.latency", t["int8"], "ms", t["fp32"])
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print("\n| model | target | mode | result | cosine | size | nodes kept float |")
    print("|---|---|---|---|---|---|---|")
    for key, target, mode, outcome, a in rows:
        if a is None:
            print(f"| {key} | {target} | {mode} | {outcome} | - | - | - |")
            continue
        kept = len(a.float_nodes)
        print(f"| {key} | {target} | {mode} | {outcome} | {a.parity.primary.cosine_similarity:.4f} | "
              f"{a.size_bytes / 1e6:.2f} MB | {kept} |")


if __name__ == "__main__":
    main()
