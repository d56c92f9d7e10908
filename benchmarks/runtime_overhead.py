"""What `edgelift.load(...).run()` costs over the backend's own API, on the same native session.

MobileNetV2-224 (plain torch, random weights) and the digits CNN, both exported by `edge convert`;
ONNX Runtime (`InferenceSession.run`) and LiteRT (`set_tensor` / `invoke` / `get_tensor`, digits
CNN only until the TFLite converter lands). Timed interleaved in one process: read the ratios.

    python benchmarks/runtime_overhead.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from _common import ROOT, interleaved_median_ms, result

import edgelift


def bench_onnxruntime(tag: str, path: Path, x: np.ndarray, rounds: int = 60) -> None:
    model = edgelift.load(path)
    raw = model.session.session  # the very InferenceSession the wrapper calls
    name = model.inputs[0].name
    t = interleaved_median_ms({
        "edge": lambda: model.run({name: x}),
        "raw": lambda: raw.run(None, {name: x}),
    }, rounds=rounds, inner=10)
    result(f"runtime_overhead.{tag}.onnxruntime", t["edge"], "ms", t["raw"])


def bench_litert(tag: str, path: Path, x: np.ndarray) -> None:
    model = edgelift.load(path, backend="litert")
    it = model.session.interpreter
    i, o = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]

    def raw():
        it.set_tensor(i, x)
        it.invoke()
        return it.get_tensor(o)

    name = model.inputs[0].name
    t = interleaved_median_ms({"edge": lambda: model.run({name: x}), "raw": raw})
    result(f"runtime_overhead.{tag}.litert", t["edge"], "ms", t["raw"])


def main() -> None:
    import torch

    from examples.digits.to_tflite import digits_onnx_to_tflite
    from examples.digits.train import train as train_digits
    from examples.models.mobilenet_v2 import build_model

    art = ROOT / "examples" / "digits" / "artifacts"
    train_digits(art)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        mnv2 = edgelift.convert(build_model(), example_inputs=(torch.randn(1, 3, 224, 224),), out=tmp / "m",
                                name="mobilenet_v2").artifact("none").path
        digits = edgelift.convert(art / "digits.pt2", out=tmp / "d").artifact("none").path
        (tmp / "digits.tflite").write_bytes(digits_onnx_to_tflite(digits))
        rng = np.random.default_rng(0)
        bench_onnxruntime("mobilenet_v2_224", Path(mnv2), rng.standard_normal((1, 3, 224, 224), dtype=np.float32))
        xd = rng.standard_normal((1, 1, 8, 8), dtype=np.float32)
        bench_onnxruntime("digits_cnn", Path(digits), xd)
        bench_litert("digits_cnn", tmp / "digits.tflite", xd)


if __name__ == "__main__":
    main()
