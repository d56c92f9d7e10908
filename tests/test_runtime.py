"""The runtime layer: one `load()` API over ONNX Runtime and LiteRT (and the tflite-runtime rules),
checked on the digits CNN exported by the converter against the torch model it came from."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest

import edgelift
from tests.builders import dynamic_range_fc
from edgelift import errors
from edgelift.runtimes import tflite as tflite_backend


@pytest.mark.parametrize("backend, fixture", [("onnxruntime", "digits_onnx"), ("litert", "digits_tflite")])
def test_backends_agree_with_the_torch_source(request, digits_reference, backend, fixture):
    x, ref, labels = digits_reference
    with edgelift.load(request.getfixturevalue(fixture)) as m:
        assert m.backend == backend
        assert m.inputs[0].shape[1:] == (1, 8, 8) and m.inputs[0].shape[0] in (None, "batch")
        assert m.inputs[0].dtype == "float32" and m.outputs[0].shape[1:] == (10,)
        out = m.run({"x": x})[m.outputs[0].name]
        np.testing.assert_allclose(out, ref, atol=1e-4)
        one = m.run(x[:1])[m.outputs[0].name]  # batch 1 after 360: resized on demand
        np.testing.assert_allclose(one, ref[:1], atol=1e-4)
        assert np.mean(out.argmax(1) == labels) > 0.95


def test_feeds_dict_positional_and_keyword_are_the_same(digits_onnx, digits_reference):
    x = digits_reference[0][:4]
    m = edgelift.load(digits_onnx)
    a, b, c = m.run({"x": x}), m.run(x), m.run(x=x)
    np.testing.assert_array_equal(a["linear_1"], b["linear_1"])
    np.testing.assert_array_equal(a["linear_1"], c["linear_1"])


@pytest.mark.parametrize("call, needle", [
    (lambda m, x: m.run({"image": x}), "input names do not match"),
    (lambda m, x: m.run(x.astype(np.float64)), "must be float32, got float64"),
    (lambda m, x: m.run(x[:, :, :4]), "must have shape ['batch', 1, 8, 8] (non-empty), got [4, 1, 4, 8]"),
    (lambda m, x: m.run(x[0]), "must have shape"),
    (lambda m, x: m.run(x, x), "takes 1 input(s)"),
])
def test_bad_feeds(digits_onnx, digits_reference, call, needle):
    m = edgelift.load(digits_onnx)
    with pytest.raises(errors.InputMismatchError) as ei:
        call(m, digits_reference[0][:4])
    assert needle in str(ei.value)


def test_onnxruntime_options(digits_onnx, digits_reference):
    x, ref, _ = digits_reference
    m = edgelift.load(digits_onnx, threads=1, optimization="disabled", arena=False)
    np.testing.assert_allclose(m.run(x)["linear_1"], ref, atol=1e-4)
    with pytest.raises(errors.InvalidOptionError, match="optimization 'fast' unknown"):
        edgelift.load(digits_onnx, optimization="fast")
    with pytest.raises(errors.InvalidOptionError, match="is not in this onnxruntime .* install onnxruntime-gpu"):
        edgelift.load(digits_onnx, providers=["TensorrtExecutionProvider"])
    with pytest.raises(errors.InvalidOptionError, match="has no option"):
        edgelift.load(digits_onnx, xnnpack=False)


def test_litert_without_xnnpack(digits_tflite, digits_reference):
    x, ref, _ = digits_reference
    m = edgelift.load(digits_tflite, backend="litert", threads=1, xnnpack=False)
    np.testing.assert_allclose(m.run(x)["logits"], ref, atol=1e-4)


def test_format_comes_from_content_not_extension(digits_onnx, tmp_path, digits_reference):
    disguised = tmp_path / "model.tflite"
    disguised.write_bytes(digits_onnx.read_bytes())
    assert edgelift.load(disguised).backend == "onnxruntime"
    with pytest.raises(errors.InvalidOptionError, match="runs tflite models, not onnx"):
        edgelift.load(disguised, backend="litert")


def test_unknown_backend_lists_choices(digits_onnx):
    with pytest.raises(errors.InvalidOptionError, match="auto, onnxruntime, litert, tflite-runtime, coreml, llama.cpp"):
        edgelift.load(digits_onnx, backend="tensorrt")


def test_missing_backend_names_the_extra(digits_tflite, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("ai_edge_litert", "tflite_runtime") else real(name, *a))
    with pytest.raises(errors.MissingDependencyError, match=r"pip install '\.\[tflite\]' in the edgelift clone"):
        edgelift.load(digits_tflite)


def test_coreml_outside_apple_platforms(tmp_path):
    pkg = tmp_path / "m.mlpackage"
    pkg.mkdir()
    (pkg / "Manifest.json").write_text("{}")
    with pytest.raises(errors.BackendUnavailableError, match="Apple platforms"):
        edgelift.load(pkg)


# --- tflite-runtime -------------------------------------------------------------------------------


@pytest.fixture
def fake_tflite_runtime(monkeypatch):
    """tflite-runtime 2.14 needs numpy < 2, so it cannot live in this environment. This replays its
    `tflite_runtime.interpreter` module with LiteRT's Interpreter (the same API), so our backend's
    refusal rules run against a real interpreter; the real package is run by test_pi_like_venv."""
    from ai_edge_litert import interpreter as litert_interpreter

    pkg = types.ModuleType("tflite_runtime")
    mod = types.ModuleType("tflite_runtime.interpreter")
    mod.Interpreter = litert_interpreter.Interpreter
    mod.OpResolverType = litert_interpreter.OpResolverType
    pkg.interpreter = mod
    pkg.__spec__ = importlib_spec("tflite_runtime")
    monkeypatch.setitem(sys.modules, "tflite_runtime", pkg)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", mod)


def importlib_spec(name):
    import importlib.machinery

    return importlib.machinery.ModuleSpec(name, None)


def test_tflite_runtime_refuses_numpy2(fake_tflite_runtime, digits_tflite):
    with pytest.raises(errors.IncompatibleBackendError, match="numpy"):
        edgelift.load(digits_tflite, backend="tflite-runtime")


def test_tflite_runtime_runs_float_and_refuses_dynamic_range(fake_tflite_runtime, monkeypatch, digits_tflite,
                                                             digits_reference, tmp_path):
    monkeypatch.setattr(tflite_backend, "numpy_major", lambda: 1)
    x, ref, _ = digits_reference
    m = edgelift.load(digits_tflite, backend="tflite-runtime")
    np.testing.assert_allclose(m.run(x)["logits"], ref, atol=1e-4)
    dr = dynamic_range_fc(tmp_path / "dr.tflite")
    assert edgelift.load(dr, backend="litert").run(np.ones((1, 8), np.float32))["y"].shape == (1, 4)
    with pytest.raises(errors.IncompatibleBackendError, match="dynamic-range quantized"):
        edgelift.load(dr, backend="tflite-runtime")


def test_quantization_params_in_signature(tmp_path):
    from edgelift.converters.tflite.builder import TFLiteBuilder

    b = TFLiteBuilder()
    x = b.tensor("q_in", (1, 4), "int8", scales=[0.5], zero_points=[-3])
    y = b.tensor("q_out", (1, 4), "int8", scales=[0.5], zero_points=[-3])
    b.op("RELU", [x], [y])
    b.inputs, b.outputs = [x], [y]
    (tmp_path / "q.tflite").write_bytes(b.finish())
    m = edgelift.load(tmp_path / "q.tflite")
    q = m.inputs[0].quantization
    assert q.scales == (0.5,) and q.zero_points == (-3,)
    out = m.run(np.array([[-10, -3, 0, 5]], np.int8))["q_out"]
    np.testing.assert_array_equal(out, [[-3, -3, 0, 5]])  # ReLU clamps at the zero point


# --- bad files: every format, in a separate interpreter so a native crash would show -----------


BAD_FILE_SCRIPT = """
import sys, edgelift
from edgelift import errors
for path in sys.argv[1:]:
    try:
        edgelift.load(path)
        print(path, "LOADED")
    except errors.EdgeError as e:
        print(path, type(e).__name__)
"""


def test_truncated_and_random_files_of_every_format(tmp_path, digits_onnx, digits_tflite, smollm2_gguf):
    import subprocess

    rng = np.random.default_rng(0)
    files = []
    for src, ext in ((digits_onnx, "onnx"), (digits_tflite, "tflite")):
        data = src.read_bytes()
        for cut in (0.05, 0.5, 0.95):
            f = tmp_path / f"cut{int(cut * 100)}.{ext}"
            f.write_bytes(data[: int(len(data) * cut)])
            files.append(f)
    with open(smollm2_gguf, "rb") as fh:
        head = fh.read(4 << 20)
    for n in (16, 4096, len(head)):
        f = tmp_path / f"cut{n}.gguf"
        f.write_bytes(head[:n])
        files.append(f)
    for magic, ext in ((b"GGUF", "gguf"), (b"\x1c\x00\x00\x00TFL3", "tflite"), (b"\x08\x07", "onnx"), (b"", "bin")):
        f = tmp_path / f"random.{ext}"
        f.write_bytes(magic + rng.integers(0, 256, 8192, dtype=np.uint8).tobytes())
        files.append(f)
    r = subprocess.run([sys.executable, "-c", BAD_FILE_SCRIPT, *map(str, files)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    results = dict(line.rsplit(" ", 1) for line in r.stdout.strip().splitlines())
    assert len(results) == len(files)
    assert set(results.values()) <= {"ModelFormatError", "UnsupportedOperatorError"}, results


def test_closed_model_and_backend_failures(digits_onnx, digits_reference, tmp_path):
    m = edgelift.load(digits_onnx)
    m.close()
    with pytest.raises(errors.ModelClosedError):
        m.run(digits_reference[0][:1])
    # a failure inside the backend (two inputs whose symbolic dims disagree) is typed, not raw
    from onnx import TensorProto, helper, save

    g = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "g",
                          [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n"]),
                           helper.make_tensor_value_info("b", TensorProto.FLOAT, ["k"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])])
    save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(tmp_path / "add.onnx"))
    add = edgelift.load(tmp_path / "add.onnx")
    with pytest.raises(errors.InferenceError, match="onnxruntime failed to run add.onnx"):
        add.run(np.ones(3, np.float32), np.ones(4, np.float32))


def test_tflite_session_recovers_after_a_failed_resize(digits_tflite, digits_reference):
    x, ref, _ = digits_reference
    m = edgelift.load(digits_tflite)
    assert m.run(x[:64])["logits"].shape == (64, 10)
    with pytest.raises(errors.InputMismatchError):
        m.run(x[:0])
    np.testing.assert_allclose(m.run(x[:64])["logits"], ref[:64], atol=1e-4)


def test_pt2_is_not_runnable(digits_dir):
    with pytest.raises(errors.InvalidOptionError, match="conversion source, not a runnable artifact"):
        edgelift.load(digits_dir / "digits.pt2")


def test_int_feeds_out_of_range_are_refused():
    from edgelift.core.tensors import TensorSpec, validate_inputs

    with pytest.raises(errors.CalibrationError, match="outside int32"):
        validate_inputs({"t": np.array([[2**32 + 5]], np.int64)}, None, [TensorSpec("t", ("n", 1), "int32")], "x")
