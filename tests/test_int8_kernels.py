"""int8 weights and the CPU that runs them: on x86 without VNNI ONNX Runtime's uint8 x int8 kernels saturate
full-range weights, so the converter quantizes weights to 7 bits there (ORT's reduce_range)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import convert_keeping_failed
from edgelift.converters import quantize
from edgelift.core.cpu import cpu_flags, int8_kernels_saturate


def test_saturating_cpus_are_x86_with_avx2_and_no_vnni():
    """Flags as Linux lists them (hand-written lines, not a capture: only the ``flags`` field is read)."""
    zen3 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma bmi2\n"
    zen4 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512_vnni\n"
    alder = "flags\t\t: avx avx2 avx_vnni\n"
    assert int8_kernels_saturate("x86_64", cpu_flags(zen3))
    assert not int8_kernels_saturate("x86_64", cpu_flags(zen4))
    assert not int8_kernels_saturate("x86_64", cpu_flags(alder))
    assert not int8_kernels_saturate("aarch64", cpu_flags(zen3))  # ARM kernels widen before adding
    assert not int8_kernels_saturate("x86_64", set())  # no AVX2: the SSE kernels widen too


def _relu_matmul(path, k: int = 64, n: int = 16):
    """x -> Relu -> MatMul(W): non-negative activations (uint8 at zero point 0) against weights all near each
    channel's maximum, so two adjacent byte products (255 x 127 x 2) exceed int16 on saturating kernels."""
    w = (np.random.default_rng(0).uniform(0.9, 1.0, (k, n)) * np.where(np.arange(n) % 2, 1, -1)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"], name="relu"), helper.make_node("MatMul", ["r", "w"], ["y"], name="mm")],
        "relu_matmul", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])], [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return w


def _weights(path) -> np.ndarray:
    m = onnx.load(str(path))
    int8 = [numpy_helper.to_array(t) for t in m.graph.initializer if t.data_type == TensorProto.INT8]
    return max(int8, key=lambda a: a.size)  # the weight (the others are zero points)


@pytest.mark.parametrize("saturating", [False, True])
def test_int8_weights_take_seven_bits_where_kernels_saturate(tmp_path, monkeypatch, saturating):
    src = tmp_path / "relu_matmul.onnx"
    w = _relu_matmul(src)
    x = np.random.default_rng(1).uniform(0.8, 1.0, (16, w.shape[0])).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    monkeypatch.setattr(quantize, "int8_kernels_saturate", lambda: saturating)
    r = convert_keeping_failed(src, quantize="int8", calibration=tmp_path / "calib.npz", out=tmp_path / "out",
                               repair=False)
    art = r.artifact("int8")
    q = _weights(art.path)
    assert (np.abs(q).max() <= 64) == saturating  # 7-bit weights exactly where the host saturates 8-bit ones
    assert art.quantization.details["weight_bits"] == (7 if saturating else 8)
    assert any("7 bits" in w_ for w_ in art.warnings) == saturating


def test_seven_bit_weights_compute_right_on_a_saturating_cpu(tmp_path, monkeypatch):
    """On this machine's own ONNX Runtime: the 8-bit artifact is measurably wrong, the 7-bit one right
    (against the fp32 product); skipped on CPUs whose kernels do not saturate."""
    if not int8_kernels_saturate():
        pytest.skip("this CPU's int8 kernels do not saturate (VNNI or not x86)")
    src = tmp_path / "relu_matmul.onnx"
    w = _relu_matmul(src)
    x = np.random.default_rng(1).uniform(0.8, 1.0, (16, w.shape[0])).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    want = x[:1] @ w
    errors = {}
    for saturating in (False, True):
        monkeypatch.setattr(quantize, "int8_kernels_saturate", lambda s=saturating: s)
        r = convert_keeping_failed(src, quantize="int8", calibration=tmp_path / "calib.npz",
                                   out=tmp_path / f"out{saturating}", repair=False)
        sess = ort.InferenceSession(str(r.artifact("int8").path), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"x": x[:1]})[0]
        errors[saturating] = float(np.linalg.norm(got - want) / np.linalg.norm(want))
    assert errors[True] < 0.02 < errors[False], errors
