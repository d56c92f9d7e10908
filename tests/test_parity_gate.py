"""Wrong output never exits 0: the parity gate, --keep-failed, layer-wise localization and mixed-precision repair,
fp16 overflow, and quantization modes that would reach nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from edgelift import convert, errors
from edgelift.cli import app

F = TensorProto.FLOAT


def _save(tmp_path, nodes, inits, x_shape, y_shape, name="m.onnx", opset=17):
    import onnx

    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, x_shape)],
                          [helper.make_tensor_value_info("y", F, y_shape)],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    path = tmp_path / name
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)]), path)
    return path


def test_gate_failure_exits_3_names_the_artifact_and_writes_only_the_rest(digits_dir, tmp_path):
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["convert", str(digits_dir / "digits.pt2"), "-q", "none", "-q", "int8",
                                 "--calibration", str(digits_dir / "calib.npz"),
                                 "--validation", str(digits_dir / "val.npz"), "--min-cosine", "0.99999999",
                                 "--no-repair", "--out", str(out)])
    assert r.exit_code == 3, r.output[-1500:]
    line = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(line) == 1 and "onnx int8 fails its parity gate (cosine 0." in line[0] and "< 0.99999999" in line[0]
    report = json.loads((out / "conversion.json").read_text())
    status = {a["quantization"]["mode"]: a["status"] for a in report["artifacts"]}
    assert status["int8"] == "failed" and not (out / "digits.int8.onnx").exists()
    # fp32 is within 1e-8 of torch in cosine? it is held to the same 0.99999999: whichever passed was written
    for a in report["artifacts"]:
        assert (a["status"] == "passed") == bool(a["path"]) and (not a["path"] or (out / a["path"].split("/")[-1]).exists())
    # layer-wise: the first layers where the int8 error jumps, by name, measured against the fp32 graph
    failed = next(a for a in report["artifacts"] if a["quantization"]["mode"] == "int8")
    assert failed["layer_errors"] and all(e["rel_l2"] > 0 for e in failed["layer_errors"])

    kept = tmp_path / "kept"
    r = CliRunner().invoke(app, ["convert", str(digits_dir / "digits.pt2"), "-q", "int8", "--calibration",
                                 str(digits_dir / "calib.npz"), "--validation", str(digits_dir / "val.npz"),
                                 "--min-cosine", "0.99999999", "--no-repair", "--keep-failed", "--out", str(kept)])
    assert r.exit_code == 3 and (kept / "digits.int8.onnx").exists()
    doc = json.loads((kept / "conversion.json").read_text())
    assert doc["artifacts"][0]["status"] == "failed"


def test_api_raises_parity_error_with_the_report(digits_dir, tmp_path):
    with pytest.raises(errors.ParityError) as e:
        convert(str(digits_dir / "digits.pt2"), quantize="int8", calibration=str(digits_dir / "calib.npz"),
                validation=str(digits_dir / "val.npz"), out=tmp_path / "o", max_rel_l2=1e-9, repair=False)
    assert e.value.exit_code == 3 and e.value.result.artifacts[0].status == "failed"
    assert "rel-L2" in str(e.value)


def test_repair_keeps_the_worst_nodes_float_until_the_gate_holds(tmp_path):
    """A net whose middle layer sees one huge activation: per-tensor int8 crushes everything else in it. The
    repair finds that layer (it adds the error) and keeps it in float; the artifact then passes, checked here
    against ONNX Runtime on the original."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    nodes, inits, prev = [], {}, "x"
    for i in range(8):  # 8 fully-connected layers; layer 4 has one output channel 500x the others
        w = (rng.standard_normal((16 if i == 0 else 32, 8 if i == 7 else 32)) / np.sqrt(32)).astype(np.float32)
        if i == 4:
            w[:, 0] *= 500.0  # its range ruins per-tensor activation quantization of everything else there
        if i == 5:
            w[0, :] = 0.0  # ... and the next layer ignores it, so the float model does not care
        inits[f"w{i}"] = w
        out = "y" if i == 7 else f"a{i}"
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}" if i < 7 else out], name=f"fc{i}"))
        if i < 7:
            nodes.append(helper.make_node("Relu", [f"h{i}"], [out], name=f"relu{i}"))
        prev = out
    src = _save(tmp_path, nodes, inits, ["batch", 16], ["batch", 8])
    x = rng.standard_normal((64, 16)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x[:32])
    np.savez(tmp_path / "val.npz", x=x[32:])
    with pytest.raises(errors.ParityError):
        convert(str(src), quantize="int8", calibration=str(tmp_path / "calib.npz"),
                validation=str(tmp_path / "val.npz"), out=tmp_path / "norepair", repair=False)
    r = convert(str(src), quantize="int8", calibration=str(tmp_path / "calib.npz"),
                validation=str(tmp_path / "val.npz"), out=tmp_path / "repaired")
    a = r.artifacts[0]
    assert a.status == "passed" and a.float_nodes and set(a.float_nodes) & {"fc4", "fc5"}
    rep = a.quantization.details["repair"]
    assert rep["cosine_after"] > rep["cosine_before"]
    ref = ort.InferenceSession(str(src)).run(None, {"x": x[32:]})[0]
    got = ort.InferenceSession(a.path).run(None, {"x": x[32:]})[0]
    cos = np.sum(ref * got, 1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    assert cos.mean() >= 0.99


def test_fp16_keeps_overflowing_nodes_fp32(tmp_path):
    """x * 1000, squared: 1e6-scale activations overflow fp16 (inf): those nodes stay fp32 and the artifact
    matches ONNX Runtime on the original; plain fp16 conversion of the same graph would be inf."""
    import onnxruntime as ort

    nodes = [helper.make_node("Mul", ["x", "k"], ["a"], name="scale"), helper.make_node("Mul", ["a", "a"], ["b"], name="square"),
             helper.make_node("Log", ["b"], ["c"], name="log"), helper.make_node("Mul", ["c", "half"], ["y"], name="half")]
    src = _save(tmp_path, nodes, {"k": np.float32(1000), "half": np.float32(0.5)}, ["batch", 8], ["batch", 8])
    x = (np.random.default_rng(1).uniform(0.5, 2.0, (16, 8))).astype(np.float32)
    np.savez(tmp_path / "val.npz", x=x)
    r = convert(str(src), quantize="fp16", validation=str(tmp_path / "val.npz"), out=tmp_path / "o")
    a = r.artifacts[0]
    assert {"square", "log"} <= set(a.float_nodes)
    ref = ort.InferenceSession(str(src)).run(None, {"x": x})[0]
    got = ort.InferenceSession(a.path).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, ref, rtol=2e-3)


def test_coreml_fp16_keeps_overflowing_nodes_fp32(tmp_path):
    """The same overflow in a Core ML fp16 package (ONNX -> MIL lowering): the overflowing nodes' MIL ops compute
    in fp32 (coremltools' FP16ComputePrecision op selector), and the saved package matches ONNX Runtime."""
    pytest.importorskip("coremltools")
    import onnxruntime as ort

    from edgelift.converters.coreml.executor import MILReferenceSession

    nodes = [helper.make_node("Mul", ["x", "k"], ["a"], name="scale"), helper.make_node("Mul", ["a", "a"], ["b"], name="square"),
             helper.make_node("Log", ["b"], ["c"], name="log"), helper.make_node("Mul", ["c", "half"], ["y"], name="half")]
    src = _save(tmp_path, nodes, {"k": np.float32(1000), "half": np.float32(0.5)}, [1, 8], [1, 8])
    x = (np.random.default_rng(1).uniform(0.5, 2.0, (16, 8))).astype(np.float32)
    np.savez(tmp_path / "val.npz", x=x)
    r = convert(str(src), to="coreml", quantize="fp16", validation=str(tmp_path / "val.npz"), out=tmp_path / "o")
    a = r.artifacts[0]
    assert {"square", "log"} <= set(a.float_nodes) and "half" not in a.float_nodes
    ref = ort.InferenceSession(str(src)).run(None, {"x": x[:1]})[0]
    package = MILReferenceSession(a.path)  # Core ML runs only on Apple systems: the saved program, in numpy
    got = package.run({"x": x[:1]})[package.outputs[0].name]
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, ref, rtol=2e-3)


def test_coreml_fp16_names_where_it_breaks_and_keeps_those_nodes_fp32(tmp_path):
    """x + 8000 - 8000 in fp16 keeps ~3 bits of x (no overflow, plain cancellation): the Core ML package's
    layer-wise comparison names the subtraction, and the repair keeps it and its producer in fp32 until the gate
    holds; the saved package then matches ONNX Runtime."""
    pytest.importorskip("coremltools")
    import onnxruntime as ort

    from edgelift.converters.coreml.executor import MILReferenceSession

    nodes = [helper.make_node("Add", ["x", "big"], ["a"], name="shift"),
             helper.make_node("Sub", ["a", "big"], ["b"], name="unshift"),
             helper.make_node("Mul", ["b", "two"], ["y"], name="double")]
    src = _save(tmp_path, nodes, {"big": np.float32(8000), "two": np.float32(2)}, [1, 64], [1, 64])
    x = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    np.savez(tmp_path / "val.npz", x=x)
    r = convert(str(src), to="coreml", quantize="fp16", validation=str(tmp_path / "val.npz"), out=tmp_path / "o")
    a = r.artifacts[0]
    assert a.status == "passed" and set(a.float_nodes) == {"shift", "unshift"}
    assert a.layer_errors and a.layer_errors[0]["node"] == "unshift"
    assert a.quantization.details["repair"]["cosine_before"] < 0.9
    package = MILReferenceSession(a.path)
    ref = ort.InferenceSession(str(src)).run(None, {"x": x[:1]})[0]
    np.testing.assert_allclose(package.run({"x": x[:1]})[package.outputs[0].name], ref, rtol=1e-3, atol=1e-3)


def test_int4_on_a_conv_net_is_refused_not_copied(tmp_path):
    w = np.random.default_rng(2).standard_normal((4, 3, 3, 3)).astype(np.float32)
    src = _save(tmp_path, [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], {"w": w},
                ["batch", 3, 8, 8], ["batch", 4, 8, 8])
    out = tmp_path / "o"
    r = CliRunner().invoke(app, ["convert", str(src), "-q", "int4", "--out", str(out)])
    assert r.exit_code == 2 and "int4 reaches no weight" in r.output and not out.exists()


def test_int8_on_an_opset_11_export_upgrades_and_says_so(tmp_path):
    """Per-channel DequantizeLinear needs opset 13: an opset-11 graph (paddle2onnx's, tf2onnx's default) is
    upgraded, and the artifact loads and matches ONNX Runtime on the original."""
    import onnxruntime as ort

    rng = np.random.default_rng(3)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])]
    src = _save(tmp_path, nodes, {"w": w}, [-1, 3, "h", "w_"], [-1, 8, "h", "w_"], opset=11)
    x = rng.standard_normal((16, 3, 12, 12)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    r = convert(str(src), quantize="int8", calibration=str(tmp_path / "calib.npz"), out=tmp_path / "o")
    a = r.artifacts[0]
    assert any("upgraded from opset 11 to 13" in w for w in a.warnings)
    assert r.source.input_shapes == {"x": ["?", 3, "h", "w_"]} or r.source.input_shapes["x"][1:] == [3, "h", "w_"]
    ref = ort.InferenceSession(str(src)).run(None, {"x": x})[0]
    got = ort.InferenceSession(a.path).run(None, {"x": x})[0]
    assert np.corrcoef(ref.ravel(), got.ravel())[0, 1] > 0.99


def test_inspect_counts_constant_node_weights_and_subgraph_ops(tmp_path):
    from edgelift.converters.inspect import inspect

    w = np.random.default_rng(4).standard_normal((4, 4)).astype(np.float32)
    body = helper.make_graph([helper.make_node("Relu", ["x"], ["t"]), helper.make_node("Neg", ["t"], ["u"])], "b", [],
                             [helper.make_tensor_value_info("u", F, None)])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["v"])], "o", [],
                              [helper.make_tensor_value_info("v", F, None)])
    nodes = [helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(w)),
             helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("ReduceSum", ["m"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["cond"]),
             helper.make_node("If", ["cond"], ["y.out.name"], then_branch=body, else_branch=other)]
    import onnx

    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [1, 4])],
                          [helper.make_tensor_value_info("y.out.name", F, [1, 4])],
                          [numpy_helper.from_array(np.float32(0), "zero")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "c.onnx")
    rep = inspect(tmp_path / "c.onnx")
    assert rep.parameters == 16
    assert rep.op_histogram["Relu"] == 1 and rep.op_histogram["Neg"] == 1 and rep.op_histogram["Identity"] == 1
    assert rep.outputs[0].name == "y.out.name"
    r = CliRunner().invoke(app, ["inspect", str(tmp_path / "c.onnx")], terminal_width=60)
    assert "y.out.name" in r.output.replace("\n", "").replace("│", "").replace(" ", "")
