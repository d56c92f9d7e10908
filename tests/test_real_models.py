"""Real models other projects exported (examples/models/corpus.py: paddle2onnx, tf2onnx, torch's exporters, spox),
through `edge convert` as a user runs it. Every case ends either in an artifact that passes its parity gate — checked
here again, independently, against ONNX Runtime on the original (LiteRT runs .tflite, the numpy MIL executor runs
.mlpackage) — or in exit 2 (refused: one line naming what is missing, --out untouched) or exit 3 (below its gate:
nothing written for it). Never a traceback, never exit 0 below the threshold.

The full matrix (11 models x 6 target/mode pairs) is marked ``corpus`` (``make corpus``); the cases without the
mark run in ``make test``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgelift.converters.parity import MIN_COSINE
from edgelift.core.tensors import batch_axes
from examples.models.corpus import CORPUS

CASES = [("onnx", "int8"), ("onnx", "fp16"), ("tflite", "none"), ("tflite", "fp16"), ("tflite", "int8"),
         ("coreml", "fp16")]
# one fast case per kind of behaviour, run by `make test`
SMOKE = {("nudenet", "tflite", "none"), ("silero_vad", "onnx", "fp16"), ("oww_jarvis", "tflite", "none"),
         ("ppocr_cls", "onnx", "fp16"), ("magika", "tflite", "none"), ("oww_mel", "onnx", "fp16"),
         ("minilm_sdpa", "tflite", "none")}


def _params():
    out = []
    for key in CORPUS:
        for target, mode in CASES:
            marks = () if (key, target, mode) in SMOKE else (pytest.mark.corpus,)
            out.append(pytest.param(key, target, mode, marks=marks, id=f"{key}-{target}-{mode}"))
    return out


@pytest.fixture(scope="module")
def corpus_files(tmp_path_factory):
    made: dict[str, tuple[Path, Path, Path]] = {}

    def get(key: str) -> tuple[Path, Path, Path]:
        if key not in made:
            m, d = CORPUS[key], tmp_path_factory.mktemp(key)
            made[key] = (m.fetch(), m.write_data(d / "calib.npz", 16, 0), m.write_data(d / "val.npz", 12, 1))
        return made[key]

    return get


def _outputs(run, inputs, data: dict[str, np.ndarray]) -> np.ndarray:
    """The primary output for every sample, fed one sample per call (state and scalar inputs whole)."""
    axes = batch_axes(inputs)
    n = next(v.shape[0] for k, v in data.items() if axes[k] == 0)
    return np.concatenate([np.asarray(run({k: (v[i:i + 1] if axes[k] == 0 else v) for k, v in data.items()}))
                           for i in range(n)])


def _cosine(got: np.ndarray, ref: np.ndarray) -> float:
    g = got.astype(np.float64).reshape(got.shape[0], -1)
    r = ref.astype(np.float64).reshape(g.shape)
    return float(np.mean(np.sum(g * r, 1) / np.maximum(np.linalg.norm(g, axis=1) * np.linalg.norm(r, axis=1), 1e-300)))


def _artifact_runner(path: str, renamed: dict[str, str]):
    """(run(feeds keyed by the ONNX names) -> primary output, input specs by ONNX name) in the artifact's runtime.
    ``renamed``: ONNX name -> Core ML feature name, where Core ML needed another ('x.1' -> 'x_1')."""
    if path.endswith(".onnx"):
        import onnxruntime as ort

        s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        return (lambda feeds: s.run(None, feeds)[0]), [_spec(i) for i in s.get_inputs()]
    if path.endswith(".tflite"):
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=path)
        it.allocate_tensors()
        ins = {d["name"]: d for d in it.get_input_details()}
        out = min(it.get_output_details(), key=lambda d: d["index"])

        def run(feeds):
            for k, v in feeds.items():
                it.set_tensor(ins[k]["index"], np.asarray(v, ins[k]["dtype"]))
            it.invoke()
            return it.get_tensor(out["index"])

        from edgelift.core.tensors import TensorSpec

        return run, [TensorSpec(k, tuple(int(x) for x in d["shape"]), np.dtype(d["dtype"]).name) for k, d in ins.items()]
    from edgelift.converters.coreml.executor import MILReferenceSession

    from edgelift.core.tensors import TensorSpec

    s = MILReferenceSession(path)
    back = {v: k for k, v in renamed.items()}
    return ((lambda feeds: s.run({renamed.get(k, k): v for k, v in feeds.items()})[s.outputs[0].name]),
            [TensorSpec(back.get(i.name, i.name), i.shape, i.dtype) for i in s.inputs])


def _spec(arg):
    from edgelift.core.tensors import TensorSpec

    shape = tuple(d if isinstance(d, int) and d >= 0 else (d or None) for d in arg.shape)
    dtype = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(int32)": "int32"}.get(arg.type, "float32")
    return TensorSpec(arg.name, shape, dtype)


@pytest.mark.parametrize("key,target,mode", _params())
def test_real_model_passes_its_gate_or_is_refused_in_one_line(key, target, mode, corpus_files, tmp_path):
    from typer.testing import CliRunner

    from edgelift.cli import app

    src, calib, val = corpus_files(key)
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["convert", str(src), "--to", target, "-q", mode, "--calibration", str(calib),
                                 "--validation", str(val), "--out", str(out)])
    text = r.output
    assert "Traceback" not in text and r.exit_code in (0, 2, 3), text[-2000:]
    errors = [ln for ln in text.splitlines() if ln.startswith("error:")]
    if r.exit_code == 2:
        assert len(errors) == 1 and not out.exists(), text[-2000:]  # refused before anything was written
        return
    if r.exit_code == 3:  # below its gate: said in one line with the figure; its only artifact failed, so --out
        assert len(errors) == 1 and f"{target} {mode} fails its parity gate (" in errors[0]  # stays untouched
        assert not out.exists()
        return
    report = json.loads((out / "conversion.json").read_text())
    (art,) = report["artifacts"]
    assert art["status"] == "passed"
    import onnxruntime as ort

    data = dict(np.load(val))
    original = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    ref = _outputs(lambda f: original.run(None, f)[0], [_spec(i) for i in original.get_inputs()], data)
    run, inputs = _artifact_runner(art["path"], art["quantization"]["details"].get("renamed_features", {}))
    got = _outputs(run, inputs, data)
    assert got.shape == ref.shape
    assert _cosine(got, ref) >= MIN_COSINE[mode] - 1e-6


def test_symbolic_dims_without_data_are_refused_listing_them(corpus_files, tmp_path):
    """The text detector's H and W are symbolic: with no data and no --input-shape nothing is guessed."""
    from typer.testing import CliRunner

    from edgelift.cli import app

    src, _, _ = corpus_files("ppocr_det")
    r = CliRunner().invoke(app, ["convert", str(src), "--to", "tflite", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "dim 2 (p2o.DynamicDimension.1)" in r.output and "--input-shape x=" in r.output
    r = CliRunner().invoke(app, ["convert", str(src), "--to", "tflite", "--input-shape", "x=1x3x96x128",
                                 "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output[-1500:]
    report = json.loads((tmp_path / "o" / "conversion.json").read_text())
    assert report["artifacts"][0]["built_shapes"] == {"x": [1, 3, 96, 128]}
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=report["artifacts"][0]["path"])
    assert list(it.get_input_details()[0]["shape"]) == [1, 3, 96, 128]


def test_detector_keeps_height_and_width_dynamic_in_tflite(corpus_files, tmp_path):
    """PP-OCRv4's detector (paddle2onnx) converted with ``x=1x3x?x?`` from 96x128 data: the .tflite resizes, in
    steps of its 32x down-sampling, and matches ONNX Runtime on the original at sizes it was not built at."""
    import onnxruntime as ort
    from typer.testing import CliRunner

    import edgelift
    from edgelift import errors
    from edgelift.cli import app

    src, calib, _ = corpus_files("ppocr_det")
    images = np.load(calib)["x"][:4]
    np.savez(tmp_path / "small.npz", x=images[:, :, :96, :128])
    r = CliRunner().invoke(app, ["convert", str(src), "--to", "tflite", "--input-shape", "x=1x3x?x?",
                                 "--calibration", str(tmp_path / "small.npz"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output[-1500:]
    assert "steps of 32" in r.output
    report = json.loads((tmp_path / "o" / "conversion.json").read_text())
    assert report["artifacts"][0]["built_shapes"] == {"x": [1, 3, "?", "?"]}
    model, ref = edgelift.load(report["artifacts"][0]["path"]), ort.InferenceSession(str(src))
    for x in (images[:1], images[:1, :, :160, :64]):  # 320x320 and 160x64
        want = ref.run(None, {"x": x})[0]
        got = next(iter(model.run({"x": x}).values()))
        assert got.shape == want.shape and _cosine(got, want) >= MIN_COSINE["none"]
    with pytest.raises(errors.ShapeError, match="steps of 32"):
        model.run({"x": images[:1, :, :100, :64]})


def test_edge_run_feeds_state_and_scalar_inputs_whole(corpus_files, tmp_path):
    """`edge run` on recurrent models: Silero's state [2, 1, 128] and scalar sample rate from an .npz as they are
    fed; faster-whisper's VAD (h, c [1, 1, 128]) on the random data the SDK makes from its signature."""
    from typer.testing import CliRunner

    from edgelift.cli import app

    src, _, val = corpus_files("silero_vad")
    data = {**dict(np.load(val)), "input": np.load(val)["input"][:1]}  # one 32 ms chunk at 16 kHz
    np.savez(tmp_path / "chunk.npz", **data)
    r = CliRunner().invoke(app, ["run", str(src), "--input", str(tmp_path / "chunk.npz"), "--save", str(tmp_path / "o.npz")])
    assert r.exit_code == 0, r.output[-1500:]
    import onnxruntime as ort

    ref = ort.InferenceSession(str(src)).run(None, data)
    got = np.load(tmp_path / "o.npz")
    np.testing.assert_allclose(got["output"], ref[0], rtol=1e-5, atol=1e-6)
    src, _, _ = corpus_files("fw_vad")
    r = CliRunner().invoke(app, ["run", str(src), "--random", "--batch", "3"])
    assert r.exit_code == 0 and "speech_probs" in r.output, r.output[-1500:]
