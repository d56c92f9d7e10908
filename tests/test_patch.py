"""Patch-based inference (MCUNetV2): the memory planner, receptive fields against brute force, and
patched outputs against the full model in ONNX Runtime (fp32 within 1e-5; int8 QDQ exactly equal:
each patch runs the same integer kernels on the same int8 inputs, with padding only at true borders)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import edge_sdk
from edge_sdk import errors
from edge_sdk.runtimes.memory import load_graph, parse_budget, plan_memory
from edge_sdk.runtimes.ort import OrtSession
from edge_sdk.runtimes.patch import HeadGraph, PatchedSession


def test_budget_parsing():
    assert parse_budget("256KB") == 256_000
    assert parse_budget("1.5MB") == 1_500_000
    assert parse_budget("2MiB") == 2 * 1024 * 1024
    assert parse_budget("300 kib") == 300 * 1024
    assert parse_budget(4096) == 4096
    for bad in ("fast", "-1MB", "0", "12 parsecs"):
        with pytest.raises(errors.InvalidOptionError, match="budget"):
            parse_budget(bad)


def _onnx(model: nn.Module, shape, path) -> bytes:
    torch.onnx.export(model.eval(), (torch.randn(*shape),), str(path), dynamo=False, input_names=["x"],
                      output_names=["y"], opset_version=17)
    return path.read_bytes()


STACKS = {
    "strided_padded": lambda: nn.Sequential(nn.Conv2d(1, 2, 3, 2, 1), nn.Conv2d(2, 2, 3, 1, 1), nn.Conv2d(2, 1, 5, 2, 2)),
    "dilated_unpadded": lambda: nn.Sequential(nn.Conv2d(1, 2, 3, 1, 0, dilation=2), nn.Conv2d(2, 1, 3, 2, 1, dilation=3)),
    "pools": lambda: nn.Sequential(nn.Conv2d(1, 2, 3, 1, 1), nn.MaxPool2d(3, 2, 1), nn.Conv2d(2, 2, 1),
                                   nn.AvgPool2d(2, 2), nn.Conv2d(2, 1, 3, 1, 1)),
    "asymmetric": lambda: nn.Sequential(nn.Conv2d(1, 2, (3, 5), (1, 2), (1, 2)), nn.Conv2d(2, 1, (5, 3), (2, 1), (2, 0))),
}


@pytest.mark.parametrize("name", sorted(STACKS))
def test_receptive_field_matches_brute_force(name, tmp_path):
    """Perturb each input pixel alone and see which outputs move: the planner's input region of every
    output pixel must be exactly the bounding box of the pixels that move it."""
    torch.manual_seed(0)
    size = 23
    data = _onnx(STACKS[name](), (1, 1, size, size), tmp_path / "m.onnx")
    graph, _ = load_graph(data)
    plan = plan_memory(graph)
    hg = HeadGraph(graph, plan)
    split = graph.outputs[0].name
    head = hg.ancestors(split)
    sess = OrtSession(data)
    x = np.random.default_rng(0).standard_normal((1, 1, size, size)).astype(np.float32)
    base = sess.run({"x": x})["y"][0, 0]
    moved = np.zeros((size, size, *base.shape), bool)  # input pixel -> which outputs changed
    for i in range(size):
        for j in range(size):
            xp = x.copy()
            xp[0, 0, i, j] += 1000.0  # large enough to win any max-pool window it is in
            moved[i, j] = np.abs(sess.run({"x": xp})["y"][0, 0] - base) > 1e-3
    H, W = base.shape
    for oi in range(H):
        for oj in range(W):
            geo = hg.geometry(split, head, (oi, oi + 1, oj, oj + 1))
            r = geo.regions["x"]
            rows, cols = np.nonzero(moved[:, :, oi, oj])
            assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == r, (oi, oj)


def _check_patched(path, splits_and_grids, exact: bool):
    graph, data = load_graph(path)
    plan = plan_memory(graph)
    hg = HeadGraph(graph, plan)
    full = OrtSession(data)
    x = np.random.default_rng(1).standard_normal((2, *plan.shapes[hg.input][1:])).astype(np.float32)
    want = full.run({hg.input: x})
    cands = hg.split_candidates()
    assert cands, "no split point found"
    for pick, grid in splits_and_grids:
        split = cands[int(pick * (len(cands) - 1))]
        if grid > min(plan.shapes[split][2:]):
            continue
        pp = hg.plan_patches(split, grid)
        got = PatchedSession(graph, hg, pp, lambda b: OrtSession(b)).run({hg.input: x})
        for k in want:
            if exact:
                np.testing.assert_array_equal(got[k], want[k], err_msg=f"{split} {grid}x{grid}")
            else:
                np.testing.assert_allclose(got[k], want[k], atol=1e-5, rtol=0, err_msg=f"{split} {grid}x{grid}")
    return plan, hg


def test_digits_cnn_patched_equals_full(digits_result):
    for mode, exact in (("none", False), ("int8", True)):
        _check_patched(digits_result.artifact(mode).path, [(0.0, 2), (0.5, 2), (1.0, 3), (1.0, 2)], exact)


@pytest.fixture(scope="module")
def mobilenet_onnx(tmp_path_factory, convert_all):
    from examples.models.mobilenet_v2 import build_model, with_batch_statistics

    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    # random weights and ranges: int8 may miss its gate; kept unrepaired, only its patched run is compared here
    r = convert_all(with_batch_statistics(build_model()), example_inputs=(x,), quantize=["none", "int8"],
                    calibration="random", out=tmp_path_factory.mktemp("mnv2"), name="mnv2", repair=False)
    return r.artifact("none").path, r.artifact("int8").path


@pytest.mark.slow
def test_mobilenet_v2_patched_equals_full_and_planner_figures(mobilenet_onnx):
    fp32, int8 = mobilenet_onnx
    plan, _ = _check_patched(fp32, [(0.1, 2), (0.4, 3), (0.7, 4)], exact=False)
    assert plan.peak_bytes == 4 * 1_404_928  # 112x112x(16 + 96) floats
    plan, hg = _check_patched(int8, [(0.1, 2), (0.4, 3), (0.7, 4)], exact=True)
    assert plan.peak_bytes == 1_404_928  # MCUNetV2's MobileNetV2-224 int8 baseline
    best = hg.search(plan.peak_bytes // 4)
    assert best.peak <= plan.peak_bytes // 4 and best.extra_compute < 1.25


@pytest.mark.slow
def test_resnet18_patched_equals_full(tmp_path):
    from examples.models.resnet import build_model

    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    path = edge_sdk.convert(build_model(), example_inputs=(x,), out=tmp_path, name="r18").artifacts[0].path
    _check_patched(path, [(0.0, 2), (0.5, 3), (1.0, 4)], exact=False)


def test_load_with_memory_budget(digits_result):
    path = digits_result.artifact("none").path
    plain = edge_sdk.load(path)
    x = np.random.default_rng(2).standard_normal((3, *plain.inputs[0].shape[1:])).astype(np.float32)
    want = plain.run(x)
    peak = plan_memory(load_graph(path)[0]).peak_bytes
    assert edge_sdk.load(path, memory_budget=peak).memory_plan is None  # the plain schedule fits
    m = edge_sdk.load(path, memory_budget=int(peak * 0.8))
    assert m.memory_plan is not None and m.memory_plan.peak <= peak * 0.8
    np.testing.assert_allclose(m.run(x)[m.outputs[0].name], want[plain.outputs[0].name], atol=1e-5)
    with pytest.raises(errors.InvalidOptionError, match="smallest peak is"):
        edge_sdk.load(path, memory_budget="10B")


def test_cli_plan_marks_peak_and_writes_svg(digits_result, tmp_path):
    from xml.dom.minidom import parse

    from typer.testing import CliRunner

    from edge_sdk.cli import app

    path = digits_result.artifact("int8").path
    res = CliRunner().invoke(app, ["plan", str(path), "--plot", str(tmp_path / "p.svg")])
    assert res.exit_code == 0, res.output
    peak = plan_memory(load_graph(path)[0]).peak_bytes
    assert f"{peak:,} B" in res.output and "<- peak" in res.output
    svg = parse(str(tmp_path / "p.svg"))
    reds = [r for r in svg.getElementsByTagName("rect") if r.getAttribute("fill") == "#d62728"]
    assert len(reds) == 1
    res = CliRunner().invoke(app, ["plan", str(path), "--memory-budget", "1B"])
    assert res.exit_code == 2 and "smallest peak" in res.output
    budget = str(int(peak * 0.8))
    res = CliRunner().invoke(app, ["plan", str(path), "--memory-budget", budget, "--save-model", str(tmp_path / "p.onnx")])
    assert res.exit_code == 0, res.output
    x = np.random.default_rng(3).standard_normal((2, 1, 8, 8)).astype(np.float32)
    a, b = edge_sdk.load(path).run(x), edge_sdk.load(tmp_path / "p.onnx").run(x)  # the saved schedule runs alone
    np.testing.assert_array_equal(next(iter(a.values())), next(iter(b.values())))
