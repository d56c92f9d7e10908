"""Core ML target: .mlpackage files checked on Linux by the numpy MIL executor, and the executor
itself checked op by op against torch/numpy and end to end against ONNX Runtime."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

import edgelift
from edgelift import errors

pytest.importorskip("coremltools")

MODES = ["none", "fp16", "int8", "int4", "palettize4"]


def _check_modes(r, fp16_rel_l2=1e-2):
    fp32, fp16 = r.artifact("none", "coreml"), r.artifact("fp16", "coreml")
    assert fp32.parity.primary.max_abs_error <= 1e-4
    assert fp16.parity.primary.rel_l2_error <= fp16_rel_l2
    sizes = {a.quantization.mode: a.size_bytes for a in r.artifacts}
    assert sizes["int8"] < 0.75 * sizes["fp16"] and sizes["palettize4"] < sizes["int8"]
    return fp32


@pytest.fixture(scope="module")
def digits_coreml(digits_dir, tmp_path_factory):
    return edgelift.convert(digits_dir / "digits.pt2", to="coreml", quantize=MODES, coreml_target="iOS18",
                            validation=digits_dir / "val.npz", out=tmp_path_factory.mktemp("cm"), name="digits")


def test_digits_from_torch_every_mode(digits_coreml):
    r = digits_coreml
    fp32 = _check_modes(r)
    q8 = r.artifact("int8", "coreml")
    assert abs(q8.parity.accuracy - fp32.parity.accuracy) <= 0.015
    assert "MIL reference executor" in q8.parity.runtime  # Linux: says who produced the numbers
    assert q8.quantization.details["compressed_weights"] >= 2
    skipped = {s["name"]: s["reason"] for s in q8.quantization.details["skipped"]}
    assert all("< 2048" in why for why in skipped.values())  # only small tensors stay float in int8
    q4 = r.artifact("int4", "coreml")
    assert any("not divisible by block 32" in s["reason"] for s in q4.quantization.details["skipped"])


def test_torch_source_with_dynamic_batch_gives_a_flexible_batch(digits_coreml, digits_dir, tmp_path):
    """The .pt2 has a dynamic batch: its package takes 1..64 rows in one call and matches torch on 5 of them;
    --static-batch pins it to 1."""
    from edgelift.converters.coreml.executor import MILReferenceSession

    fp32 = digits_coreml.artifact("none", "coreml")
    assert "batch 1..64" in fp32.quantization.details["frontend"]
    s = MILReferenceSession(fp32.path)
    assert s.inputs[0].shape[0] is None and s.inputs[0].shape[1:] == (1, 8, 8)
    x = np.load(digits_dir / "val.npz")["x"][:5].astype(np.float32)
    got = next(iter(s.run({s.inputs[0].name: x}).values()))
    ref = torch.export.load(digits_dir / "digits.pt2").module()(torch.from_numpy(x)).detach().numpy()
    assert got.shape == (5, 10)
    np.testing.assert_allclose(got, ref, atol=1e-4)
    r = edgelift.convert(digits_dir / "digits.pt2", to="coreml", quantize="none", dynamic_batch=False,
                         validation=digits_dir / "val.npz", out=tmp_path, name="digits")
    assert MILReferenceSession(r.artifacts[0].path).inputs[0].shape[0] == 1


def test_digits_from_onnx_uses_our_lowering(digits_result, digits_dir, tmp_path):
    onnx_path = digits_result.artifact("none", "onnx").path
    r = edgelift.convert(onnx_path, to="coreml", quantize=MODES, coreml_target="iOS18",
                         validation=digits_dir / "val.npz", out=tmp_path, name="digits")
    fp32 = _check_modes(r)
    assert fp32.quantization.details["frontend"].startswith("edgelift ONNX -> MIL lowering")
    assert fp32.parity.reference.startswith("onnxruntime")  # executor vs ORT, end to end
    assert abs(r.artifact("int8", "coreml").parity.accuracy - fp32.parity.accuracy) <= 0.015


def test_ios16_int8_and_palettize_use_ios16_ops(digits_result, digits_dir, tmp_path):
    """iOS16 packages carry constexpr_affine_dequantize / the iOS16 lookup table: the executor reads both."""
    from edgelift.converters.coreml.package import read_mlpackage

    r = edgelift.convert(digits_result.artifact("none", "onnx").path, to="coreml", quantize=["int8", "palettize6"],
                         validation=digits_dir / "val.npz", out=tmp_path, name="d")
    for a in r.artifacts:
        block, _ = read_mlpackage(a.path).main_block()
        kinds = {op.type for op in block.operations if op.type.startswith("constexpr")}
        assert kinds == {"constexpr_affine_dequantize" if a.quantization.mode == "int8" else "constexpr_lut_to_dense"}
        assert a.parity.primary.top1_agreement >= 0.97


def test_int4_needs_ios18_and_nothing_is_written(digits_dir, tmp_path):
    out = tmp_path / "never"
    with pytest.raises(errors.InvalidOptionError, match="--coreml-target iOS18"):
        edgelift.convert(digits_dir / "digits.pt2", to="coreml", quantize=["none", "int4"], out=out)
    assert not out.exists()


def test_palettization_is_core_ml_only(digits_dir, tmp_path):
    for to, match in [("onnx", "use --to coreml"), ("tflite", "supports --quantize")]:
        with pytest.raises(errors.QuantizationError, match=match):
            edgelift.convert(digits_dir / "digits.pt2", to=to, quantize="palettize4", out=tmp_path / to)
        assert not (tmp_path / to).exists()


def test_unsupported_ops_listed_all_at_once(tmp_path):
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Einsum", ["a", "a"], ["b"], equation="ij,ij->ij", name="e1"),
         helper.make_node("Hardmax", ["b"], ["c"], name="d1")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [2, 2])])
    path = tmp_path / "m.onnx"
    path.write_bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString())
    with pytest.raises(errors.UnsupportedOperatorError) as e:
        edgelift.convert(path, to="coreml", out=tmp_path / "o")
    msg = str(e.value)
    assert "Einsum ×1" in msg and "Hardmax ×1" in msg and "e1" in msg and "d1" in msg
    assert not (tmp_path / "o").exists()


def test_corrupt_package_is_a_format_error(digits_coreml, tmp_path):
    from edgelift.converters.coreml.executor import MILReferenceSession

    pkg = tmp_path / "bad.mlpackage"
    shutil.copytree(digits_coreml.artifact("none", "coreml").path, pkg)
    weights = pkg / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    weights.write_bytes(weights.read_bytes()[:4096])
    with pytest.raises(errors.ModelFormatError, match="truncated|outside"):
        MILReferenceSession(pkg).run({"x": np.zeros((1, 1, 8, 8), np.float32)})
    (pkg / "Manifest.json").write_text("{not json")
    with pytest.raises(errors.ModelFormatError, match="corrupt"):
        MILReferenceSession(pkg)


def test_inspect_mlpackage(digits_coreml):
    info = edgelift.inspect(digits_coreml.artifact("int8", "coreml").path)
    assert info.format == "coreml"
    assert info.inputs[0].name == "x" and tuple(info.inputs[0].shape) == (None, 1, 8, 8)  # flexible batch
    assert info.op_histogram["conv"] == 3 and info.op_histogram["constexpr_blockwise_shift_scale"] >= 2
    assert info.weight_dtypes["int8"].tensors >= 2 and any("int8" in q for q in info.quantization)
    assert info.metadata["deployment_target"] == "iOS18"


# --- the executor, op by op, against torch -------------------------------------------------------


def _run_prog(build, inputs: dict[str, np.ndarray], tmp_path, precision="fp32"):
    """Build a one-function MIL program, save it as a package and run it in the executor."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb

    from edgelift.converters.coreml.executor import MILReferenceSession

    (x,) = inputs.values()

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=ct.target.iOS18)
    def prog(x):
        return build(x)

    m = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18,
                   compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16)
    path = tmp_path / "p.mlpackage"
    shutil.rmtree(path, ignore_errors=True)
    m.save(str(path))
    s = MILReferenceSession(path)
    out = s.run(dict(zip([i.name for i in s.inputs], inputs.values())))
    return next(iter(out.values()))


def test_executor_conv_grouped_strided_padded(tmp_path):
    from coremltools.converters.mil import Builder as mb

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 6, 9, 9)).astype(np.float32)
    w = rng.standard_normal((12, 2, 3, 3)).astype(np.float32)
    b = rng.standard_normal(12).astype(np.float32)
    got = _run_prog(lambda x_: mb.conv(x=x_, weight=w, bias=b, strides=[2, 1], pad_type="custom", pad=[1, 0, 2, 1],
                                       dilations=[1, 2], groups=3), {"x": x}, tmp_path)
    xp = torch.nn.functional.pad(torch.from_numpy(x), (2, 1, 1, 0))
    ref = torch.nn.functional.conv2d(xp, torch.from_numpy(w), torch.from_numpy(b), stride=(2, 1), dilation=(1, 2), groups=3)
    np.testing.assert_allclose(got, ref.numpy(), atol=1e-4)


def test_executor_pools_norms_activations(tmp_path):
    from coremltools.converters.mil import Builder as mb

    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 7, 7)).astype(np.float32)
    t = torch.from_numpy(x)
    got = _run_prog(lambda x_: mb.max_pool(x=x_, kernel_sizes=[3, 3], strides=[2, 2], pad_type="custom", pad=[1, 1, 1, 1]),
                    {"x": x}, tmp_path)
    np.testing.assert_allclose(got, torch.nn.functional.max_pool2d(t, 3, 2, 1).numpy(), atol=1e-6)
    got = _run_prog(lambda x_: mb.avg_pool(x=x_, kernel_sizes=[2, 2], strides=[2, 2], pad_type="valid"), {"x": x}, tmp_path)
    np.testing.assert_allclose(got, torch.nn.functional.avg_pool2d(t, 2, 2).numpy(), atol=1e-6)
    g, b = rng.standard_normal(7).astype(np.float32), rng.standard_normal(7).astype(np.float32)
    got = _run_prog(lambda x_: mb.layer_norm(x=x_, axes=[-1], gamma=g, beta=b, epsilon=1e-5), {"x": x}, tmp_path)
    ref = torch.nn.functional.layer_norm(t, (7,), torch.from_numpy(g), torch.from_numpy(b))
    np.testing.assert_allclose(got, ref.numpy(), atol=1e-5)
    got = _run_prog(lambda x_: mb.gelu(x=x_, mode="EXACT"), {"x": x}, tmp_path)
    np.testing.assert_allclose(got, torch.nn.functional.gelu(t).numpy(), atol=1e-6)
    got = _run_prog(lambda x_: mb.softmax(x=x_, axis=1), {"x": x}, tmp_path)
    np.testing.assert_allclose(got, torch.softmax(t, 1).numpy(), atol=1e-6)


def test_executor_fp16_program_rounds_like_fp16(tmp_path):
    from coremltools.converters.mil import Builder as mb

    x = np.array([[1.0001, 2048.6, 3.14159]], np.float32)
    got = _run_prog(lambda x_: mb.mul(x=x_, y=np.float32(1.0)), {"x": x}, tmp_path, precision="fp16")
    np.testing.assert_array_equal(got, x.astype(np.float16).astype(np.float32))


def test_sub_byte_unpacking_and_blockwise_dequantization():
    from edgelift.converters.coreml.executor import _blockwise_shift_scale, _lut_to_dense
    from edgelift.converters.coreml.package import unpack_bits

    vals = np.array([-8, 7, 3, -1, 0, 5], np.int64)
    nib = (vals & 0xF).astype(np.uint8)
    packed = (nib[0::2] | (nib[1::2] << 4)).astype(np.uint8)  # LSB first: element 0 in the low nibble
    np.testing.assert_array_equal(unpack_bits(packed, 4, 6, signed=True), vals)
    six = np.array([63, 1, 32, 7], np.uint8)
    bits = np.concatenate([[(v >> i) & 1 for i in range(6)] for v in six]).astype(np.uint8)
    np.testing.assert_array_equal(unpack_bits(np.packbits(bits, bitorder="little"), 6, 4, signed=False), six)
    data = np.arange(-4, 4, dtype=np.int8).reshape(2, 4)
    scale = np.array([[0.5, 2.0], [1.0, 0.25]], np.float32)  # blocks of 2 along axis 1
    np.testing.assert_allclose(_blockwise_shift_scale(data, scale),
                               data * np.repeat(scale, 2, axis=1))
    lut = np.array([[[10.0], [20.0]], [[30.0], [40.0]]], np.float32)[:, None]  # (2 row blocks, 1, 2, 1)
    idx = np.array([[0, 1], [1, 0]], np.uint8)
    np.testing.assert_array_equal(_lut_to_dense(indices=idx, lut=lut), [[10, 20], [40, 30]])


# --- the real models (slow) ----------------------------------------------------------------------


@pytest.mark.slow
def test_mobilenet_v2_every_mode(convert_all, tmp_path):
    """fp16 is held to PyTorch's own fp16 arithmetic on the same images, not to issue 5's 1e-2: this
    random-weight net amplifies fp16 rounding across 52 convolutions (torch .half() itself: ~1.7e-2)."""
    from examples.models.mobilenet_v2 import build_model, with_batch_statistics

    model = with_batch_statistics(build_model())
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    images = torch.randn(6, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    np.savez(tmp_path / "val.npz", x=images.numpy())
    with torch.no_grad():
        ref = model(images).double()
        torch_fp16 = float((model.half()(images.half()).double() - ref).norm() / ref.norm())
    model.float()
    for label, src, kw in [("torch", model, dict(example_inputs=(x,))), ("onnx", None, {})]:
        if src is None:
            src = edgelift.convert(model, example_inputs=(x,), out=tmp_path / "onnx", name="m").artifacts[0].path
        # random weights: int4/palettize4 land below their gates; kept, the test checks what they are
        r = convert_all(src, to="coreml", quantize=MODES, coreml_target="iOS18", validation=tmp_path / "val.npz",
                        out=tmp_path / label, **kw)
        fp32 = _check_modes(r, fp16_rel_l2=torch_fp16)
        assert fp32.parity.primary.rel_l2_error <= 1e-5
        assert r.artifact("palettize4", "coreml").size_bytes < 0.3 * fp32.size_bytes
        assert r.artifact("int8", "coreml").parity.primary.cosine_similarity >= 0.99


@pytest.mark.slow
def test_minilm_every_mode(minilm_dir, tmp_path, convert_all):
    """coremltools' torch frontend fails on this BERT under torch 2.13, so the torch source falls back to
    our lowering (and says so); the ONNX source takes it directly."""
    from examples.models.minilm import load_minilm, tokenize

    encoder, tokenizer = load_minilm(minilm_dir)
    feeds = tokenize(tokenizer, ["edge devices run small models", "a cat sat on the mat", "hello"], length=16)
    np.savez(tmp_path / "val.npz", **{k: v.numpy() for k, v in feeds.items()})
    r = convert_all(encoder, example_inputs=(feeds["input_ids"], feeds["attention_mask"]), to="coreml",
                    quantize=MODES, coreml_target="iOS18", validation=tmp_path / "val.npz", out=tmp_path / "o")
    fp32 = _check_modes(r)
    assert fp32.parity.primary.cosine_similarity >= 0.9999
    assert r.artifact("int8", "coreml").parity.primary.cosine_similarity >= 0.99
    assert "lowering" in fp32.quantization.details["frontend"]
