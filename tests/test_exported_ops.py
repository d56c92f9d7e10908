"""Ops today's exporters emit (SDPA masks, jax2tf/tf2onnx classifiers, YOLOv8 heads, audio front-ends) lower to
TFLite and Core ML, and each artifact computes what ONNX Runtime computes on the source graph."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgelift import convert

F = TensorProto.FLOAT


def _model(nodes, inits, x_shape, y_shape, opset=18):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, x_shape)],
                          [helper.make_tensor_value_info("y", F, y_shape)],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _masked(cond_nodes):
    """y = Where(cond, x, -x): a boolean op feeding a select, as attention masks do."""
    return cond_nodes + [helper.make_node("Neg", ["x"], ["nx"]), helper.make_node("Where", ["c", "x", "nx"], ["y"])]


CASES = {
    "Equal": (_masked([helper.make_node("Floor", ["x"], ["f"]), helper.make_node("Equal", ["f", "zero"], ["c"])]),
              {"zero": np.float32(0)}),
    "GreaterOrEqual+Not": (_masked([helper.make_node("GreaterOrEqual", ["x", "zero"], ["ge"]),
                                    helper.make_node("Not", ["ge"], ["c"])]), {"zero": np.float32(0.25)}),
    "IsNaN": (_masked([helper.make_node("Div", ["x", "x"], ["r"]), helper.make_node("IsNaN", ["r"], ["n"]),
                       helper.make_node("Not", ["n"], ["c"])]), {}),
    "Reciprocal": ([helper.make_node("Abs", ["x"], ["a"]), helper.make_node("Add", ["a", "one"], ["b"]),
                    helper.make_node("Reciprocal", ["b"], ["y"])], {"one": np.float32(1)}),
    "CumSum": ([helper.make_node("CumSum", ["x", "axis"], ["y"], exclusive=1)], {"axis": np.array(1, np.int64)}),
    "Trilu": ([helper.make_node("Trilu", ["x", "k"], ["y"], upper=0)], {"k": np.array(0, np.int64)}),
    "Softmax(axis=1)": ([helper.make_node("Softmax", ["x"], ["y"], axis=1)], {}),
    # torch's default coordinates (half_pixel, round_prefer_floor): the same pixels as TFLite's nearest
    "Resize(nearest x2)": ([helper.make_node("Resize", ["x4", "", "scales"], ["r"], mode="nearest"),
                            helper.make_node("Reshape", ["r", "shape"], ["r3"]),
                            helper.make_node("Slice", ["r3", "starts", "ends", "axes"], ["y"])],
                           {"scales": np.array([1, 1, 2, 2], np.float32), "shape": np.array([-1, 8, 12], np.int64),
                            "starts": np.array([0, 0], np.int64), "ends": np.array([4, 6], np.int64),
                            "axes": np.array([1, 2], np.int64)}),
    "ReduceMean(axes input, negative)": ([helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=1),
                                          helper.make_node("Sub", ["x", "m"], ["y"])],
                                         {"axes": np.array([-1], np.int64)}),
    # a static KV cache's update: rows 3 and 1 of x (moved first) replaced by twice rows 0 and 1
    "ScatterND": ([helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
                   helper.make_node("Slice", ["xt", "s0", "s2", "ax0"], ["head"]),
                   helper.make_node("Mul", ["head", "two"], ["upd"]),
                   helper.make_node("ScatterND", ["xt", "rows", "upd"], ["st"]),
                   helper.make_node("Transpose", ["st"], ["y"], perm=[1, 0, 2])],
                  {"s0": np.array([0], np.int64), "s2": np.array([2], np.int64), "ax0": np.array([0], np.int64),
                   "two": np.float32(2), "rows": np.array([[3], [-3]], np.int64)}),
    "Sin+Ceil": ([helper.make_node("Sin", ["x"], ["s"]), helper.make_node("Ceil", ["x"], ["c"]),
                  helper.make_node("Add", ["s", "c"], ["y"])], {}),
}


def _session(path):
    """LiteRT for .tflite; the numpy MIL executor for .mlpackage (Core ML itself runs only on Apple systems)."""
    if path.endswith(".mlpackage"):
        from edgelift.converters.coreml.executor import MILReferenceSession

        return MILReferenceSession(path)
    from edgelift.runtimes.tflite import open_litert

    return open_litert(path, None)


@pytest.mark.parametrize("target", ["tflite", "coreml"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_exported_op_lowers_and_matches_onnxruntime(case, target, tmp_path):
    import onnx
    import onnxruntime as ort

    nodes, inits = CASES[case]
    if any("x4" in n.input for n in nodes):  # 4-D cases read x as [batch, 1, 4, 6]
        nodes = [helper.make_node("Unsqueeze", ["x", "second"], ["x4"])] + nodes
        inits = {**inits, "second": np.array([1], np.int64)}
    src = tmp_path / "m.onnx"
    onnx.save(_model(nodes, inits, ["batch", 4, 6], ["batch", 4, 6]), src)
    x = np.random.default_rng(0).standard_normal((8, 4, 6)).astype(np.float32)
    x[0, 0, 0] = 0.0  # a 0/0 for IsNaN
    np.savez(tmp_path / "val.npz", x=x)
    r = convert(str(src), to=target, quantize="none", validation=str(tmp_path / "val.npz"), out=tmp_path / "out")
    art = r.artifacts[0]
    expected = ort.InferenceSession(str(src)).run(None, {"x": x})[0]
    got = np.concatenate([_session(art.path).run({"x": x[i:i + 1]})["y"] for i in range(len(x))])
    finite = np.isfinite(expected)
    np.testing.assert_allclose(got[finite], expected[finite], rtol=1e-4, atol=1e-5)
    assert art.status == "passed"


def test_if_with_a_condition_static_shapes_decide_is_inlined(tmp_path):
    """torch 1.12 exported LayerNorm with an If on the input's rank; once shapes are static the branch taken is
    known: the prepared graph inlines it, so neither lowering needs control flow."""
    import onnx
    import onnxruntime as ort

    then_g = helper.make_graph([helper.make_node("Relu", ["x"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", F, None)])
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", F, None)])
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Size", ["s"], ["rank"]),
             helper.make_node("GreaterOrEqual", ["rank", "three"], ["cond"]),
             helper.make_node("If", ["cond"], ["z"], then_branch=then_g, else_branch=else_g),
             helper.make_node("Add", ["z", "one"], ["y"])]
    src = tmp_path / "if.onnx"
    onnx.save(_model(nodes, {"three": np.array(3, np.int64), "one": np.float32(1)}, ["batch", 4, 6], ["batch", 4, 6],
                     opset=13), src)
    x = np.random.default_rng(1).standard_normal((4, 4, 6)).astype(np.float32)
    np.savez(tmp_path / "val.npz", x=x)
    r = convert(str(src), to=["tflite", "coreml"], quantize="none", validation=str(tmp_path / "val.npz"),
                out=tmp_path / "out")
    expected = ort.InferenceSession(str(src)).run(None, {"x": x})[0]
    np.testing.assert_allclose(expected, np.maximum(x, 0) + 1, rtol=1e-6)  # the then-branch is the one taken
    for a in r.artifacts:
        assert a.status == "passed" and a.parity.primary.max_abs_error < 1e-5


def test_data_dependent_if_with_small_branches_becomes_a_select(tmp_path):
    """openWakeWord's heads run a small verifier only above a threshold (an If on data). Both branches are
    computed and Where picks: the artifacts agree with ONNX Runtime on inputs that take either branch."""
    import onnx
    import onnxruntime as ort

    then_g = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", F, None)])
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", F, None)])
    nodes = [helper.make_node("ReduceMax", ["x"], ["mx"], keepdims=0),
             helper.make_node("Greater", ["mx", "zero"], ["cond"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g)]
    src = tmp_path / "if_data.onnx"
    onnx.save(_model(nodes, {"zero": np.float32(0), "two": np.float32(2)}, [1, 4, 6], [1, 4, 6], opset=13), src)
    x = np.random.default_rng(2).standard_normal((6, 4, 6)).astype(np.float32)
    x[::2] = -np.abs(x[::2])  # every other sample takes the else branch
    np.savez(tmp_path / "val.npz", x=x)
    r = convert(str(src), to=["tflite", "coreml"], quantize="none", validation=str(tmp_path / "val.npz"),
                out=tmp_path / "out")
    sess = ort.InferenceSession(str(src))
    expected = np.concatenate([sess.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))])
    for a in r.artifacts:
        got = np.concatenate([_session(a.path).run({"x": x[i:i + 1]})["y"] for i in range(len(x))])
        np.testing.assert_allclose(got, expected, rtol=1e-6)
