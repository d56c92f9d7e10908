"""int4 (MatMulNBits) on the tiny transformer: the error is reported honestly, i.e. it equals what we
measure ourselves from torch and ONNX Runtime, and it is visibly larger than int8-dynamic's."""

from __future__ import annotations

import numpy as np
import pytest

import edgelift
from edgelift.runtimes.ort import OrtSession


@pytest.fixture(scope="module")
def tt_result(transformer_dir, tmp_path_factory):
    return edgelift.convert(
        transformer_dir / "tiny_transformer.pt2", quantize=["none", "int8-dynamic", "int4"],
        validation=transformer_dir / "val.npz", out=tmp_path_factory.mktemp("tt"), block_size=32,
    )


def test_int4_error_matches_independent_measurement(tt_result, transformer_dir):
    import torch

    val = np.load(transformer_dir / "val.npz")
    with torch.no_grad():
        ref = torch.export.load(str(transformer_dir / "tiny_transformer.pt2")).module()(torch.from_numpy(val["x"])).numpy()
    a = tt_result.artifact("int4")
    got = next(iter(OrtSession(a.path).run({"x": val["x"]}).values()))
    rel = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
    assert a.parity.primary.rel_l2_error == pytest.approx(rel, rel=1e-4)
    assert a.parity.primary.max_abs_error == pytest.approx(float(np.abs(got - ref).max()), rel=1e-4)
    assert rel > 1e-3  # 4-bit weights are not lossless: a zero here would be a lie
    assert a.parity.accuracy == pytest.approx(float(np.mean(got.argmax(1) == val["labels"])))


def test_int4_quantizes_every_linear_layer(tt_result):
    a = tt_result.artifact("int4")
    # 2 blocks x (qkv, proj, fc, fc_out) + embed + head = 10 weight MatMuls
    assert a.quantization.details["quantized_matmuls"] == 10
    info = edgelift.inspect(a.path)
    assert info.op_histogram["com.microsoft.MatMulNBits"] == 10
    assert a.size_bytes < 0.35 * tt_result.artifact("none").size_bytes
    assert a.parameters == tt_result.source.parameters


def test_int8_dynamic_is_closer_than_int4(tt_result):
    e8 = tt_result.artifact("int8-dynamic").parity.primary.rel_l2_error
    e4 = tt_result.artifact("int4").parity.primary.rel_l2_error
    assert 0 < e8 < e4
    # no convs: no warning, except the 7-bit weight note on CPUs whose int8 kernels saturate (core/cpu.py)
    from edgelift.core.cpu import int8_kernels_saturate

    warnings = tt_result.artifact("int8-dynamic").warnings
    assert [w for w in warnings if "7 bits" not in w] == []
    assert any("7 bits" in w for w in warnings) == int8_kernels_saturate()


def test_block_size_changes_the_artifact(transformer_dir, tmp_path):
    r = edgelift.convert(transformer_dir / "tiny_transformer.pt2", quantize="int4", block_size=128,
                         validation=transformer_dir / "val.npz", out=tmp_path)
    assert any("block-wise 128" in q for q in edgelift.inspect(r.artifact("int4").path).quantization)
    with pytest.raises(edgelift.errors.QuantizationError, match="block-size 48"):
        edgelift.convert(transformer_dir / "tiny_transformer.pt2", quantize="int4", block_size=48, out=tmp_path / "b")
