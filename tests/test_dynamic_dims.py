"""Dims kept dynamic in .tflite and Core ML artifacts (``--input-shape x=1x3x?x?``; converters/resizable.py).

The artifact is checked at sizes it was not built at, in LiteRT (or, for Core ML off Apple systems, the numpy MIL
executor on the saved package), against ONNX Runtime on the original model;
the size step the converter finds is checked to matter (LiteRT's raw output at a size off the step is wrong,
and the SDK refuses that size); a model whose lowering bakes its size in is refused in one line.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import edgelift
from edgelift import errors
from edgelift.cli import app

runner = CliRunner()
torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("ai_edge_litert")


class _Detector(torch.nn.Module):
    """A detector's shape: two stride-2 convs, an upsampled skip connection, a per-pixel head."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.Conv2d(8, 16, 3, 2, 1)
        self.lateral, self.head = torch.nn.Conv2d(16, 8, 1), torch.nn.Conv2d(8, 2, 3, 1, 1)

    def forward(self, x):
        a = torch.relu(self.c1(x))
        b = torch.relu(self.c2(a))
        up = torch.nn.functional.interpolate(self.lateral(b), scale_factor=2.0, mode="nearest")
        return torch.sigmoid(self.head(up + a))


class _Classifier(torch.nn.Module):
    """Global pooling after a stride-2 conv: any size runs in ONNX Runtime, but the conv's padding differs
    between even and odd sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


class _Flatten(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = torch.nn.Conv2d(3, 4, 3, 1, 1), torch.nn.Linear(4 * 16 * 16, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _export(module, path, size=64):
    torch.manual_seed(0)
    module = module.eval()
    with torch.no_grad():
        torch.onnx.export(module, (torch.randn(1, 3, size, size),), str(path), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch", 2: "h", 3: "w"}, "y": {0: "batch"}}, dynamo=False)
    return path


def _convert(model, tmp_path, modes="none", size=64):
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(0).standard_normal((4, 3, size, size)).astype(np.float32))
    out = tmp_path / "out"
    r = runner.invoke(app, ["convert", str(model), "--to", "tflite", "-q", modes, "--input-shape", "x=1x3x?x?",
                            "--calibration", str(calib), "--out", str(out)])
    return r, out


def _cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dyn-detector")
    model = _export(_Detector(), tmp / "det.onnx")
    r, out = _convert(model, tmp, "none,int8")
    assert r.exit_code == 0, r.output
    return model, out


def test_detector_resizes_and_matches_onnxruntime_at_other_sizes(detector):
    model, out = detector
    ref = ort.InferenceSession(str(model))
    from ai_edge_litert.interpreter import Interpreter

    detail = Interpreter(model_path=str(out / "det.fp32.tflite")).get_input_details()[0]
    assert list(detail["shape_signature"]) == [1, 3, -1, -1] and list(detail["shape"]) == [1, 3, 64, 64]
    for tag, floor in (("fp32", 0.99999), ("int8", 0.999)):
        m = edgelift.load(out / f"det.{tag}.tflite")
        for hw in ((96, 128), (32, 200), (128, 128)):
            x = np.random.default_rng(hw[0]).standard_normal((1, 3, *hw)).astype(np.float32)
            want = ref.run(None, {"x": x})[0]
            got = m.run({"x": x})["y"]
            assert got.shape == want.shape == (1, 2, hw[0] // 2, hw[1] // 2)
            assert _cosine(got, want) >= floor, (tag, hw)
    report = json.loads((out / "conversion.json").read_text())
    assert report["artifacts"][0]["built_shapes"] == {"x": [1, 3, "?", "?"]}


def test_sizes_off_the_step_are_refused_because_they_would_be_wrong(tmp_path):
    """The classifier lowers with its stride-2 padding baked for even sizes: the converter finds step 2; at an
    odd size LiteRT itself would run and answer wrongly (checked here against ONNX Runtime), so the SDK refuses."""
    model = _export(_Classifier(), tmp_path / "cls.onnx")
    r, out = _convert(model, tmp_path)
    assert r.exit_code == 0, r.output
    assert "steps of 2" in r.output
    artifact = out / "cls.fp32.tflite"
    x = np.random.default_rng(3).standard_normal((1, 3, 63, 63)).astype(np.float32)
    want = ort.InferenceSession(str(model)).run(None, {"x": x})[0]
    from ai_edge_litert.interpreter import Interpreter

    raw = Interpreter(model_path=str(artifact))
    d = raw.get_input_details()[0]
    raw.resize_tensor_input(d["index"], x.shape, strict=True)
    raw.allocate_tensors()
    raw.set_tensor(d["index"], x)
    raw.invoke()
    assert np.abs(raw.get_tensor(raw.get_output_details()[0]["index"]) - want).max() > 1e-3  # wrong, silently
    m = edgelift.load(artifact)
    with pytest.raises(errors.ShapeError, match="steps of 2"):
        m.run({"x": x})
    x = np.random.default_rng(4).standard_normal((1, 3, 62, 90)).astype(np.float32)
    np.testing.assert_allclose(m.run({"x": x})["y"], ort.InferenceSession(str(model)).run(None, {"x": x})[0],
                               rtol=1e-4, atol=1e-5)


def test_a_size_baked_into_the_graph_is_refused_in_one_line(tmp_path):
    model = _export(_Flatten(), tmp_path / "flat.onnx", size=16)
    r, out = _convert(model, tmp_path, size=16)
    assert r.exit_code == 2, r.output
    errors_ = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(errors_) == 1 and "cannot keep 'x' dim 2, 'x' dim 3 dynamic" in errors_[0]
    assert not out.exists()


def test_random_data_for_a_resizable_input_is_made_at_the_built_size(detector, tmp_path):
    """`edge run --random` on the artifact: the dims left dynamic take the size the file was built at (64x64),
    which is on the step; size 1 would be refused."""
    _, out = detector
    r = runner.invoke(app, ["run", str(out / "det.fp32.tflite"), "--random", "--save", str(tmp_path / "y.npz")])
    assert r.exit_code == 0, r.output
    assert np.load(tmp_path / "y.npz")["y"].shape == (1, 2, 32, 32)


def test_coreml_package_takes_the_sizes_of_its_step_and_matches_onnxruntime(tmp_path):
    """The detector to Core ML fp16 with x=1x3x?x?: the package's input lists enumerated shapes, all multiples of
    the step (4) and including the built 64x64; the saved program, run at another listed size, matches ONNX
    Runtime on the original."""
    pytest.importorskip("coremltools")
    from edgelift.converters.coreml.executor import MILReferenceSession

    model = _export(_Detector(), tmp_path / "det.onnx")
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(0).standard_normal((4, 3, 64, 64)).astype(np.float32))
    r = runner.invoke(app, ["convert", str(model), "--to", "coreml", "-q", "fp16", "--input-shape", "x=1x3x?x?",
                            "--calibration", str(calib), "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    package = MILReferenceSession(tmp_path / "o" / "det.fp16.mlpackage")
    assert package.inputs[0].shape == (1, 3, None, None)
    listed = [tuple(e.shape) for e in
              package.package.spec.description.input[0].type.multiArrayType.enumeratedShapes.shapes]
    assert (1, 3, 64, 64) in listed and all(h % 4 == 0 and w % 4 == 0 for _, _, h, w in listed)
    assert len(listed) > 1 and (1, 3, 128, 128) in listed
    x = np.random.default_rng(5).standard_normal((1, 3, 128, 128)).astype(np.float32)
    want = ort.InferenceSession(str(model)).run(None, {"x": x})[0]
    got = package.run({"x": x})[package.outputs[0].name]
    assert got.shape == want.shape and _cosine(got, want) >= 0.999
