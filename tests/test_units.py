"""Unit tests of the pure pieces: parity metrics, input validation, format sniffing, registries, passes."""

from __future__ import annotations

import numpy as np
import pytest

from edgelift import errors
from edgelift.converters import parity
from edgelift.core.formats import ModelFormat, detect_format
from edgelift.core.tensors import TensorSpec, random_input_set, validate_inputs


def test_compare_output_known_values():
    ref = np.array([[3.0, 4.0], [1.0, 0.0]], np.float32)
    got = np.array([[3.0, 4.5], [0.0, 1.0]], np.float32)
    p = parity.compare_output("y", got, ref)
    assert p.max_abs_error == pytest.approx(1.0)
    # ||diff|| = sqrt(0.25 + 1 + 1) = 1.5, ||ref|| = sqrt(26)
    assert p.rel_l2_error == pytest.approx(1.5 / np.sqrt(26))
    cos0 = (9 + 18) / (5 * np.hypot(3, 4.5))
    assert p.cosine_similarity == pytest.approx((cos0 + 0.0) / 2)
    assert p.top1_agreement == pytest.approx(0.5)  # row 0 agrees (class 1), row 1 flips


def test_top1_only_for_classifier_outputs_and_accuracy():
    feats = np.ones((4, 3, 2), np.float32)
    assert parity.compare_output("f", feats, feats).top1_agreement is None
    logits = np.array([[0, 1], [1, 0], [0, 1]], np.float32)
    assert parity.accuracy({"y": logits}, np.array([1, 0, 0])) == pytest.approx(2 / 3)
    assert parity.accuracy({"y": logits}, None) is None


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        parity.compare_output("y", np.zeros((2, 3)), np.zeros((2, 4)))


SPECS = [TensorSpec("x", ("batch", 1, 8, 8), "float32")]


def test_validate_casts_and_keeps_labels():
    arrays, labels = validate_inputs({"x": np.zeros((3, 1, 8, 8), np.float64)}, np.arange(3), SPECS, "t")
    assert arrays["x"].dtype == np.float32 and labels.tolist() == [0, 1, 2]


@pytest.mark.parametrize("arrays", [
    {"x": np.zeros((0, 1, 8, 8), np.float32)},
    {"x": np.zeros((3, 8, 8), np.float32)},
    {"x": np.zeros((3, 1, 8, 8), np.bool_)},
    {"x": np.zeros((3, 1, 8, 8), np.float32), "y": np.zeros((3, 1))},
])
def test_validate_rejects(arrays):
    with pytest.raises(errors.CalibrationError):
        validate_inputs(arrays, None, SPECS, "t")


def test_random_input_set_is_seeded_and_shaped():
    a = random_input_set(SPECS, 5, seed=3)
    b = random_input_set(SPECS, 5, seed=3)
    assert a.arrays["x"].shape == (5, 1, 8, 8) and a.synthetic
    np.testing.assert_array_equal(a.arrays["x"], b.arrays["x"])
    assert [f["x"].shape[0] for f in a.batches(2)] == [2, 2, 1]


@pytest.mark.parametrize("content, fmt", [
    (b"GGUF\x03\x00\x00\x00" + b"\x00" * 16, ModelFormat.GGUF),
    (b"\x1c\x00\x00\x00TFL3" + b"\x00" * 16, ModelFormat.TFLITE),
    (b"\x08\x0a\x12\x07pytorch", ModelFormat.ONNX),
])
def test_detect_format_by_content_not_extension(tmp_path, content, fmt):
    f = tmp_path / "model.bin"
    f.write_bytes(content)
    assert detect_format(f) is fmt


@pytest.mark.parametrize("content", [b"", b"hello world, not a model", b"\xff" * 64])
def test_detect_format_rejects(tmp_path, content):
    f = tmp_path / "model.onnx"
    f.write_bytes(content)
    with pytest.raises(errors.ModelFormatError):
        detect_format(f)


def test_quant_mode_registry():
    from edgelift.converters import quantize

    assert quantize.get_mode("fp32") is quantize.get_mode("none")
    with pytest.raises(ValueError, match="already registered"):
        quantize.register_quant_mode("int8", tag="x", summary="x")(lambda m, o: None)
    with pytest.raises(errors.QuantizationError, match="choose one of: none, fp16, int8, int8-dynamic, int4"):
        quantize.get_mode("int2")


def _gemm_model(trans_b: int):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 4) if trans_b else (4, 5)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Gemm", ["a", "w", "b"], ["y"], name="fc", transB=trans_b)], "g",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_to_matmul_is_exact(trans_b):
    from edgelift.converters.onnx_graph import gemm_to_matmul
    from edgelift.runtimes.ort import OrtSession

    m = _gemm_model(trans_b)
    a = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    before = OrtSession(m.SerializeToString()).run({"a": a})["y"]
    assert gemm_to_matmul(m) == 1
    assert [n.op_type for n in m.graph.node] == ["MatMul", "Add"]
    assert {t.name for t in m.graph.initializer} == {"w_kn", "b"}
    np.testing.assert_allclose(OrtSession(m.SerializeToString()).run({"a": a})["y"], before, rtol=1e-6)


def test_topological_sort_restores_order():
    from onnx import TensorProto, helper

    from edgelift.converters.onnx_graph import check_model, topological_sort

    n1 = helper.make_node("Relu", ["x"], ["h"], name="first")
    n2 = helper.make_node("Neg", ["h"], ["y"], name="second")
    g = helper.make_graph([n2, n1], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(errors.ModelFormatError):
        check_model(m, "unsorted")
    topological_sort(m)
    assert [n.name for n in m.graph.node] == ["first", "second"]
    check_model(m, "sorted")


def test_parse_input_shape():
    from edgelift.converters.signature import parse_input_shape

    assert parse_input_shape("x=1x3x224x224") == ("x", (1, 3, 224, 224))
    assert parse_input_shape("ids=2,16") == ("ids", (2, 16))
    assert parse_input_shape("x=?x3x?x?") == ("x", (None, 3, None, None))
    assert parse_input_shape("sr=") == ("sr", ())
    for bad in ("x", "=1x2", "x=1xax2", "x=0x3"):
        with pytest.raises(errors.InvalidOptionError):
            parse_input_shape(bad)
