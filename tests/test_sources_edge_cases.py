"""Sources that are valid but unusual: fixed batch axes, token-id inputs, BatchNorm buffers, aliases."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import edgelift
from edgelift.converters import parity


class ConvBN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


@pytest.mark.parametrize("batch", [1, 4])
def test_pt2_with_fixed_batch(tmp_path, batch):
    torch.manual_seed(0)
    m = ConvBN().eval()
    ep = torch.export.export(m, (torch.randn(batch, 1, 8, 8),))  # no Dim: batch is fixed
    torch.export.save(ep, str(tmp_path / "fixed.pt2"))
    val = tmp_path / "val.npz"
    x = np.random.default_rng(0).standard_normal((10, 1, 8, 8)).astype(np.float32)  # 10 % 4 != 0
    np.savez(val, x=x)
    r = edgelift.convert(tmp_path / "fixed.pt2", quantize=["none", "int8"], calibration=val, validation=val,
                         out=tmp_path / "o")
    assert r.source.inputs[0].shape == [batch, 1, 8, 8]
    assert any("fixed batch" in n for n in r.source.notes)
    fp32 = r.artifact("none").parity
    assert fp32.samples == 10 and fp32.primary.max_abs_error < 1e-4
    with torch.no_grad():
        ref = m(torch.from_numpy(x)).numpy()
    from edgelift.runtimes.ort import OrtSession

    got = OrtSession(r.artifact("none").path).run_all(
        edgelift.core.tensors.InputSet({"x": x}, synthetic=False))
    np.testing.assert_allclose(next(iter(got.values())), ref, atol=1e-4)


def test_parameters_exclude_buffers_and_note_folding(tmp_path):
    m = ConvBN().eval()
    n_params = sum(p.numel() for p in m.parameters())  # 80 + 16 + 27 = 123; BN buffers are not parameters
    batch = torch.export.Dim("batch", min=1, max=64)
    ep = torch.export.export(m, (torch.randn(2, 1, 8, 8),), dynamic_shapes=({0: batch},))
    torch.export.save(ep, str(tmp_path / "bn.pt2"))
    r = edgelift.convert(tmp_path / "bn.pt2", out=tmp_path / "o")
    assert r.source.parameters == n_params == 123
    assert r.artifact("none").parameters == 80 + 27  # BN folded into the conv weight and bias
    assert any("folded" in n for n in r.source.notes)
    assert edgelift.inspect(tmp_path / "bn.pt2").parameters == n_params


class TokenModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(10, 16)
        self.out = torch.nn.Linear(16, 4)

    def forward(self, ids):
        return self.out(self.emb(ids).mean(1))


def test_token_ids_without_data_stay_in_vocabulary(tmp_path):
    r = edgelift.convert(TokenModel().eval(), example_inputs=(torch.zeros(2, 5, dtype=torch.int64),),
                         quantize=["none", "int8-dynamic"], out=tmp_path)
    assert r.artifact("none").parity.primary.max_abs_error < 1e-5


def test_aliases_and_repeats_give_one_artifact(tmp_path):
    from examples.digits.model import DigitsCNN

    r = edgelift.convert(DigitsCNN(), example_inputs=(torch.zeros(1, 1, 8, 8),), to=["onnx", "onnx"],
                         quantize=["none", "fp32", "none"], out=tmp_path)
    assert len(r.artifacts) == 1


def test_callers_logging_levels_are_restored(tmp_path):
    from examples.digits.model import DigitsCNN

    ort_logger = logging.getLogger("onnxruntime")
    root = logging.getLogger()
    saved = ort_logger.level, root.level
    try:
        ort_logger.setLevel(logging.DEBUG)
        root.setLevel(logging.WARNING)
        edgelift.convert(DigitsCNN(), example_inputs=(torch.zeros(1, 1, 8, 8),), quantize=["int4", "int8"],
                         calibration="random", out=tmp_path)
        assert ort_logger.level == logging.DEBUG and root.level == logging.WARNING
        assert logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").level == logging.NOTSET
    finally:
        ort_logger.setLevel(saved[0])
        root.setLevel(saved[1])


def test_cosine_of_scalar_per_sample_outputs_is_over_the_whole_output():
    ref = np.array([1.0, 2.0, 3.0, 4.0])
    got = np.array([1.0, 2.0, 3.0, -4.0])
    p = parity.compare_output("y", got, ref)
    assert p.cosine_similarity == pytest.approx((1 + 4 + 9 - 16) / 30)
