"""MobileNetV2-224 (plain torch, random weights): export and every mode load and run in ONNX Runtime."""

from __future__ import annotations

import pytest

import edgelift


@pytest.mark.slow
def test_mobilenet_v2_converts_in_every_mode(tmp_path):
    import torch

    from examples.models.mobilenet_v2 import build_model

    model = build_model()
    r = edgelift.convert(model, example_inputs=(torch.randn(1, 3, 224, 224),),
                         quantize=["none", "fp16", "int8", "int4"], calibration="random", out=tmp_path,
                         name="mobilenet_v2")
    assert r.source.parameters == 3_504_872
    fp32 = r.artifact("none")
    assert fp32.parity.primary.rel_l2_error < 1e-5
    assert r.artifact("fp16").parity.primary.rel_l2_error < 1e-2
    int8 = edgelift.inspect(r.artifact("int8").path)
    assert int8.op_histogram["Conv"] == 52 and "BatchNormalization" not in int8.op_histogram
    assert r.artifact("int8").size_bytes < 0.3 * fp32.size_bytes
    # int4 reaches only the classifier (one Gemm): conv weights stay fp32, and the report says so
    assert r.artifact("int4").quantization.details["quantized_matmuls"] == 1
    assert any("Conv weights stay fp32" in w for w in r.artifact("int4").warnings)
