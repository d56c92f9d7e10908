"""ONNX -> TFLite lowering (no TensorFlow), checked in LiteRT: digits, MobileNetV2, ResNet-18."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import edgelift
from edgelift import errors

pytest.importorskip("ai_edge_litert")


def ops_of(path) -> list[str]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    return [op["op_name"] for op in it._get_ops_details()]


def test_digits_fp32_and_fp16(digits_dir, tmp_path, digits_reference):
    r = edgelift.convert(digits_dir / "digits.pt2", to="tflite", quantize=["none", "fp16"],
                         validation=digits_dir / "val.npz", out=tmp_path)
    fp32, fp16 = r.artifact("none", "tflite"), r.artifact("fp16", "tflite")
    assert fp32.parity.runtime.startswith("litert") and fp32.path.endswith("digits.fp32.tflite")
    assert fp32.parity.primary.max_abs_error <= 1e-4
    assert fp16.parity.primary.rel_l2_error <= 1e-2 and fp16.parity.accuracy == fp32.parity.accuracy
    assert fp16.size_bytes < 0.6 * fp32.size_bytes
    assert fp16.weight_storage.get("float16", 0) > 0.9 * sum(fp16.weight_storage.values())
    x, ref, _ = digits_reference
    out = edgelift.load(fp32.path).run(np.ascontiguousarray(x[:1]))["linear_1"]  # ONNX output name kept
    np.testing.assert_allclose(out, ref[:1], atol=1e-4)
    ops = ops_of(fp32.path)
    assert ops.count("CONV_2D") == 3 and "RELU" not in ops  # ReLU fused into the convolutions
    assert ops.count("TRANSPOSE") == 2  # NCHW input, and back to NCHW before ONNX's flatten order


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["mobilenet_v2", "resnet"])
def test_cnns_match_onnxruntime(arch, tmp_path):
    import importlib

    model = importlib.import_module(f"examples.models.{arch}").build_model()
    r = edgelift.convert(model, example_inputs=(torch.randn(1, 3, 224, 224),), to=["tflite", "onnx"],
                         out=tmp_path, name=arch)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    lite = next(iter(edgelift.load(r.artifact("none", "tflite").path).run(x).values()))
    ort = next(iter(edgelift.load(r.artifact("none", "onnx").path).run(x).values()))
    np.testing.assert_allclose(lite, ort, atol=1e-4, rtol=0)
    qr = edgelift.convert(model, example_inputs=(torch.randn(1, 3, 224, 224),), to="tflite",
                          quantize=["fp16", "int8-dynamic", "int8", "int4"], calibration="random", out=tmp_path / "q",
                          name=arch)
    fp32_size = r.artifact("none", "tflite").size_bytes
    assert qr.artifact("fp16", "tflite").parity.primary.cosine_similarity >= 0.9999
    for mode, cosine in (("int8-dynamic", 0.99), ("int8", 0.99), ("int4", 0.98)):  # every mode runs, close
        q = qr.artifact(mode, "tflite")
        assert q.parity.primary.cosine_similarity >= cosine and q.size_bytes < 0.3 * fp32_size, mode
    ops = ops_of(r.artifact("none", "tflite").path)
    # the only TRANSPOSE is the NCHW input's; none sits between convolutions
    assert ops.count("TRANSPOSE") == 1 and ops.index("TRANSPOSE") == 0
    assert r.artifact("none", "tflite").quantization.details["transpose_ops"] == 1


def test_unsupported_ops_listed_at_once(tmp_path):
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("Einsum", ["x", "x"], ["a"], equation="ij,ij->ij", name="e1"),
         helper.make_node("Hardmax", ["a"], ["y"], name="h1")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])])
    path = tmp_path / "m.onnx"
    path.write_bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString())
    out = tmp_path / "o"
    with pytest.raises(errors.UnsupportedOperatorError) as ei:
        edgelift.convert(path, to="tflite", out=out)
    assert sorted(op for _, op in ei.value.nodes) == ["Einsum", "Hardmax"]
    assert "2 node(s) has no TFLite lowering" in str(ei.value)
    assert not out.exists()


def test_tflite_int8_needs_calibration(digits_dir, tmp_path):
    from edgelift.converters.quantize import QUANT_MODES
    from edgelift.converters.to_tflite import TFLITE_MODES

    core_ml_only = {"palettize4", "palettize6"}
    assert set(TFLITE_MODES) == set(QUANT_MODES) - core_ml_only  # every other mode has a TFLite form
    with pytest.raises(errors.CalibrationError, match="int8 needs calibration data"):
        edgelift.convert(digits_dir / "digits.pt2", to="tflite", quantize="int8", out=tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_digits_full_integer_int8(digits_dir, tmp_path):
    r = edgelift.convert(digits_dir / "digits.pt2", to="tflite", quantize=["none", "int8"],
                         calibration=digits_dir / "calib.npz", validation=digits_dir / "val.npz", out=tmp_path)
    fp32, q = r.artifact("none", "tflite"), r.artifact("int8", "tflite")
    assert abs(q.parity.accuracy - fp32.parity.accuracy) <= 0.015
    assert q.parity.primary.top1_agreement >= 0.99
    ops = ops_of(q.path)
    assert ops[0] == "QUANTIZE" and ops[-1] == "DEQUANTIZE"  # float I/O around an all-int8 body
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=q.path)
    body = {d["index"]: d for d in it.get_tensor_details()}
    for op in it._get_ops_details():
        if op["op_name"] in ("CONV_2D", "FULLY_CONNECTED", "MAX_POOL_2D"):
            assert body[op["inputs"][0]]["dtype"] == np.int8 and body[op["outputs"][0]]["dtype"] == np.int8
        if op["op_name"] == "CONV_2D":
            bias = body[op["inputs"][2]]
            assert bias["dtype"] == np.int32
            s_in = body[op["inputs"][0]]["quantization_parameters"]["scales"][0]
            s_w = body[op["inputs"][1]]["quantization_parameters"]["scales"]
            np.testing.assert_allclose(bias["quantization_parameters"]["scales"], s_in * s_w, rtol=1e-6)


def test_digits_int8_io(digits_dir, tmp_path):
    """--int8-io: the model takes and returns int8 (no QUANTIZE/DEQUANTIZE at the ends); parity feeds it
    inputs quantized with its own input parameters and still matches fp32 accuracy."""
    r = edgelift.convert(digits_dir / "digits.pt2", to="tflite", quantize=["none", "int8"], int8_io=True,
                         calibration=digits_dir / "calib.npz", validation=digits_dir / "val.npz", out=tmp_path)
    fp32, q = r.artifact("none", "tflite"), r.artifact("int8", "tflite")
    assert abs(q.parity.accuracy - fp32.parity.accuracy) <= 0.015
    ops = ops_of(q.path)
    assert "QUANTIZE" not in ops and "DEQUANTIZE" not in ops
    assert ops_of(fp32.path).count("QUANTIZE") == 0  # fp32 is untouched by the flag
    m = edgelift.load(q.path)
    assert m.inputs[0].dtype == "int8" and m.outputs[0].dtype == "int8"
    x = np.load(digits_dir / "val.npz")["x"][:1]
    qp = m.inputs[0].quantization
    xq = np.clip(np.round(x / qp.scales[0]) + qp.zero_points[0], -128, 127).astype(np.int8)
    y = m.run({m.inputs[0].name: xq})[m.outputs[0].name]
    ref = edgelift.load(fp32.path).run({m.inputs[0].name: x})
    assert y.dtype == np.int8 and int(y.argmax()) == int(next(iter(ref.values())).argmax())


def test_full_integer_int8_runs_ops_without_int8_lowering_in_float(tmp_path):
    class Softmaxed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(4, 6)

        def forward(self, x):
            return torch.softmax(torch.sigmoid(self.fc(x)), dim=-1)

    torch.manual_seed(0)
    r = edgelift.convert(Softmaxed().eval(), example_inputs=(torch.randn(2, 4),), to="tflite", quantize="int8",
                         calibration="random", out=tmp_path)
    a = r.artifact("int8", "tflite")
    assert a.quantization.details["float_ops"] == 2
    assert any("Sigmoid×1" in w and "Softmax×1" in w for w in a.warnings)
    assert a.parity.primary.cosine_similarity > 0.999
    ops = ops_of(a.path)
    assert ops == ["QUANTIZE", "FULLY_CONNECTED", "DEQUANTIZE", "LOGISTIC", "SOFTMAX"]


def test_same_padding_equivalence():
    from edgelift.converters.tflite.ops import _same_or_valid

    assert _same_or_valid((8, 8), (3, 3), (1, 1), (1, 1), [1, 1, 1, 1]) == ("SAME", [1, 1, 1, 1])
    assert _same_or_valid((8, 8), (2, 2), (2, 2), (1, 1), [0, 0, 0, 0])[0] == "VALID"
    # PyTorch pads 1 on both sides for k3 s2 on 224: the right/bottom pad is never read, but the
    # left/top one is, which SAME (0 before, 1 after) would not do -> explicit PAD with (1, 0)
    assert _same_or_valid((224, 224), (3, 3), (2, 2), (1, 1), [1, 1, 1, 1]) == (None, [1, 1, 0, 0])


def test_nhwc_io_drops_the_input_transpose(digits_dir, tmp_path, digits_reference):
    r = edgelift.convert(digits_dir / "digits.pt2", to="tflite", nhwc_io=True, validation=digits_dir / "val.npz",
                         out=tmp_path)
    a = r.artifact("none", "tflite")
    assert a.parity.primary.max_abs_error <= 1e-4  # parity feeds NHWC through the artifact's own layout
    m = edgelift.load(a.path)
    assert m.inputs[0].shape[1:] == (8, 8, 1)
    x, ref, _ = digits_reference
    np.testing.assert_allclose(m.run(np.ascontiguousarray(x[:1].transpose(0, 2, 3, 1)))["linear_1"], ref[:1], atol=1e-4)
    assert ops_of(a.path).count("TRANSPOSE") == 1  # only the one ONNX's flatten order needs


def test_inspect_tflite(digits_dir, tmp_path):
    r = edgelift.convert(digits_dir / "digits.pt2", to="tflite", quantize=["none", "fp16"], out=tmp_path)
    info = edgelift.inspect(r.artifact("none", "tflite").path)
    assert info.format == "tflite" and info.parameters == 40_394
    assert info.op_histogram == {"CONV_2D": 3, "TRANSPOSE": 2, "MAX_POOL_2D": 2, "FULLY_CONNECTED": 2, "RESHAPE": 1}
    assert info.inputs[0].shape == (1, 1, 8, 8) and info.outputs[0].name == "linear_1"
    half = edgelift.inspect(r.artifact("fp16", "tflite").path)
    assert half.weight_dtypes["float16"].elements == 40_394 and half.op_histogram["DEQUANTIZE"] == 10
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\x1c\x00\x00\x00TFL3" + b"\xff" * 40)
    with pytest.raises(errors.ModelFormatError):
        edgelift.inspect(bad)


def test_digits_int8_dynamic(digits_dir, tmp_path):
    """Dynamic range: int8 per-channel weights, float activations, hybrid kernels in LiteRT."""
    r = edgelift.convert(digits_dir / "digits.pt2", to="tflite", quantize=["none", "int8-dynamic"],
                         validation=digits_dir / "val.npz", out=tmp_path)
    fp32, dyn = r.artifact("none", "tflite"), r.artifact("int8-dynamic", "tflite")
    assert abs(dyn.parity.accuracy - fp32.parity.accuracy) <= 0.015
    assert 1e-4 < dyn.parity.primary.rel_l2_error < 0.02  # quantized, so not exact; but close
    assert dyn.size_bytes < 0.3 * fp32.size_bytes
    info = edgelift.inspect(dyn.path)
    assert info.quantization == ["5 × int8 per-channel (axis 0) weights"]
    assert any("slower than fp32" in w for w in dyn.warnings)
    from edgelift.runtimes.tflite import dynamic_range_ops
    from ai_edge_litert.interpreter import Interpreter

    assert len(dynamic_range_ops(Interpreter(model_path=dyn.path))) == 5


def test_per_channel_quantization_round_trip():
    from edgelift.converters.tflite.lower import quantize_per_channel

    w = np.random.default_rng(0).standard_normal((4, 3, 3, 2)).astype(np.float32)
    w[2] = 0
    q, s = quantize_per_channel(w, 0)
    assert q.dtype == np.int8 and s.shape == (4,) and s[2] == 1.0
    assert np.abs(q).max() == 127
    np.testing.assert_allclose(q * s[:, None, None, None], w, atol=float(s.max()) / 2 + 1e-7)


def test_torchscript_exporter_fast_path(tmp_path, digits_reference):
    from examples.digits.model import DigitsCNN

    torch.manual_seed(0)
    m = DigitsCNN().eval()
    r = edgelift.convert(m, example_inputs=(torch.zeros(1, 1, 8, 8),), to=["onnx", "tflite"], exporter="torchscript",
                         out=tmp_path)
    assert r.source.inputs[0].name == "x" and r.source.inputs[0].shape[0] == "batch"
    assert all(a.parity.primary.max_abs_error < 1e-4 for a in r.artifacts)
    assert any("TorchScript" in n for n in r.source.notes)
    with pytest.raises(errors.InvalidOptionError, match="exporter 'jit' unknown"):
        edgelift.convert(m, example_inputs=(torch.zeros(1, 1, 8, 8),), exporter="jit", out=tmp_path / "x")


def test_auto_exporter_traces_for_fixed_batch_targets(tmp_path, monkeypatch):
    """TFLite fixes the batch at 1, so 'auto' takes the fast tracer; with an ONNX target it keeps dynamo's
    dynamic batch; if tracing fails it falls back to dynamo and says so."""
    from edgelift.converters import torch_export
    from examples.digits.model import DigitsCNN

    torch.manual_seed(0)
    m, x = DigitsCNN().eval(), torch.zeros(1, 1, 8, 8)
    r = edgelift.convert(m, example_inputs=(x,), to="tflite", out=tmp_path / "a")
    assert any("TorchScript" in n for n in r.source.notes) and r.source.inputs[0].shape[0] == "batch"
    r = edgelift.convert(m, example_inputs=(x,), to=["onnx", "tflite"], out=tmp_path / "b")
    assert not any("TorchScript" in n for n in r.source.notes) and r.source.inputs[0].shape[0] == "batch"

    def broken(*a, **k):
        raise errors.ConversionError("tracing failed")
    monkeypatch.setattr(torch_export, "_export_torchscript", broken)
    r = edgelift.convert(m, example_inputs=(x,), to="tflite", out=tmp_path / "c")
    assert any("failed (tracing failed); exported with dynamo" in n for n in r.source.notes)
    assert r.artifacts[0].parity.primary.max_abs_error < 1e-4


def test_int4_fully_connected(transformer_dir, tmp_path):
    """int4 goes to FULLY_CONNECTED weights (per-channel, packed two per byte); convs would stay int8."""
    r = edgelift.convert(transformer_dir / "tiny_transformer.pt2", to="tflite", quantize=["int8-dynamic", "int4"],
                         validation=transformer_dir / "val.npz", out=tmp_path)
    q8, q4 = r.artifact("int8-dynamic", "tflite"), r.artifact("int4", "tflite")
    assert q4.size_bytes < 0.75 * q8.size_bytes
    assert q8.parity.primary.rel_l2_error < q4.parity.primary.rel_l2_error < 0.15
    info = edgelift.inspect(q4.path)
    assert info.weight_dtypes["int4"].tensors == 10 and "int8" not in info.weight_dtypes
    assert info.parameters == r.source.parameters


class SpatialZoo(torch.nn.Module):
    """Ops beyond the classification CNNs: standalone BN, explicit pad, slicing, resizing, deconv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.up = torch.nn.ConvTranspose2d(4, 6, 2, stride=2)
        self.bn.running_mean.uniform_(-1, 1)
        self.bn.running_var.uniform_(0.5, 2)

    def forward(self, x):                                            # (B, 3, 16, 16)
        h = torch.relu(self.conv(x))
        h = self.bn(h + 1.0)                                         # BN after an Add: not foldable
        h = torch.nn.functional.pad(h, (1, 2, 0, 1))                 # (B, 4, 17, 19)
        h = h[:, :, 1:13, 2:18:2]                                    # (B, 4, 12, 8)
        a = torch.nn.functional.interpolate(h, scale_factor=2, mode="nearest")
        b = torch.nn.functional.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)
        return self.up(a + b)                                        # (B, 6, 48, 32)


def test_more_spatial_ops_match_onnxruntime(tmp_path):
    torch.manual_seed(0)
    m = SpatialZoo().eval()
    r = edgelift.convert(m, example_inputs=(torch.randn(1, 3, 16, 16),), to=["tflite", "onnx"], out=tmp_path)
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    lite = next(iter(edgelift.load(r.artifact("none", "tflite").path).run(x).values()))
    ort = next(iter(edgelift.load(r.artifact("none", "onnx").path).run(x).values()))
    assert lite.shape == (1, 6, 48, 32)
    np.testing.assert_allclose(lite, ort, atol=1e-4, rtol=0)
    ops = set(ops_of(r.artifact("none", "tflite").path))
    assert {"TRANSPOSE_CONV", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "STRIDED_SLICE", "PAD"} <= ops


def test_erf_from_builtins(tmp_path):
    class Erf(torch.nn.Module):
        def forward(self, x):
            return torch.erf(x * 3.0)

    x = torch.linspace(-2, 2, 64).reshape(1, 64)
    r = edgelift.convert(Erf(), example_inputs=(x,), to="tflite", out=tmp_path)
    got = next(iter(edgelift.load(r.artifact("none", "tflite").path).run(x.numpy()).values()))
    np.testing.assert_allclose(got, torch.erf(x * 3.0).numpy(), atol=1e-6)


def test_generated_model_is_smoke_loaded_in_a_child_process(tmp_path):
    """LiteRT aborts the whole process on some malformed models; the converter loads each new
    file in a child first, so a converter bug becomes a ConversionError, not a dead CLI."""
    from edgelift.converters.to_tflite import _smoke_load

    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\x1c\x00\x00\x00TFL3" + b"\x00" * 64)
    with pytest.raises(errors.ConversionError, match="LiteRT cannot load the generated bad.tflite"):
        _smoke_load(bad)
