"""Input shapes, batch axes and ranges are settled before anything runs, never guessed (converters/signature.py,
core.tensors.batch_axes); and the parity gate's verdicts (converters/parity.gate)."""

from __future__ import annotations

import numpy as np
import pytest

from edgelift import errors
from edgelift.converters import parity
from edgelift.converters.signature import parse_batch_axis, parse_input_range, resolve_signature
from edgelift.core.tensors import InputSet, TensorSpec, batch_axes, random_input_set, validate_inputs

DETECTOR = [TensorSpec("x", ("batch", 3, "height", "width"), "float32")]
VAD = [TensorSpec("input", (None, None), "float32"), TensorSpec("state", (2, None, 128), "float32"),
       TensorSpec("sr", (), "int64")]


def test_batch_axes_follow_the_signature():
    assert batch_axes(VAD) == {"input": 0, "state": None, "sr": None}
    # a batch-named dim that is not first: the tensor is fed whole (a recurrent state [2, batch, 128])
    assert batch_axes([TensorSpec("ids", ("batch", "seq"), "int64"),
                       TensorSpec("state", (2, "batch", 128), "float32")]) == {"ids": 0, "state": None}
    assert batch_axes([TensorSpec("x", (1, 3, 8, 8), "float32")]) == {"x": 0}
    assert batch_axes(VAD, {"input": None})["input"] is None


def test_symbolic_dims_are_refused_listing_every_one():
    with pytest.raises(errors.ShapeError) as e:
        resolve_signature(DETECTOR)
    msg = str(e.value)
    assert "dim 2 (height)" in msg and "dim 3 (width)" in msg and "--input-shape x=1x3xNxN" in msg
    assert "\n" not in msg


def test_input_shape_pins_dims_and_question_mark_keeps_them():
    sig = resolve_signature(DETECTOR, input_shapes={"x": (None, 3, 640, 480)})
    (r,) = sig.inputs
    assert r.artifact_shape == ("batch", 3, 640, 480) and sig.pinned() == {"x": ("batch", 3, 640, 480)}
    assert sig.static_shapes("tflite") == {"x": (1, 3, 640, 480)}
    sig = resolve_signature(DETECTOR, input_shapes={"x": (1, 3, None, None)},
                            data=[("val.npz", {"x": np.zeros((2, 3, 64, 96), np.float32)})])
    assert sig.inputs[0].artifact_shape == (1, 3, "height", "width")  # dynamic in the ONNX artifact
    assert sig.inputs[0].data_shape == (1, 3, 64, 96)  # test data made / checked at the data's size
    with pytest.raises(errors.ShapeError, match="cannot stay dynamic"):
        sig.static_shapes("tflite")
    with pytest.raises(errors.ShapeError, match="fixes it to 3"):
        resolve_signature(DETECTOR, input_shapes={"x": (1, 4, 8, 8)})
    with pytest.raises(errors.InvalidOptionError, match="no input of"):
        resolve_signature(DETECTOR, input_shapes={"image": (1, 3, 8, 8)})


def test_data_sizes_symbolic_dims_and_same_named_dims_share_them():
    specs = [TensorSpec("ids", ("batch", "seq"), "int64"), TensorSpec("mask", ("batch", "seq"), "int64")]
    sig = resolve_signature(specs, data=[("calib.npz", {"ids": np.zeros((4, 16), np.int64)})])
    assert [r.data_shape for r in sig.inputs] == [("batch", 16), ("batch", 16)]
    assert sig.inputs[1].origins == {1: "calib.npz"}
    assert sig.static_shapes("coreml") == {"ids": (1, 16), "mask": (1, 16)}


def test_unbatched_inputs_in_npz_feeds_and_random_data():
    arrays = {"input": np.ones((5, 512), np.float32), "state": np.zeros((2, 1, 128), np.float32),
              "sr": np.array(16000, np.int64)}
    sig = resolve_signature(VAD, data=[("vad.npz", arrays)])
    assert sig.unbatched == {"state", "sr"}
    assert sig.inputs[0].data_shape == (None, 512) and sig.inputs[1].data_shape == (2, 1, 128)
    specs = sig.data_specs(static=True)
    checked, _ = validate_inputs(arrays, None, specs, "vad.npz", sig.unbatched)
    assert checked["sr"].shape == (5,) and checked["state"].shape == (5, 2, 1, 128)  # one value per sample
    data = InputSet(checked, unbatched=sig.unbatched)
    feeds = list(data.batches(64))
    assert len(feeds) == 5  # one sample per call when an input has no batch axis
    assert feeds[0]["input"].shape == (1, 512) and feeds[0]["state"].shape == (2, 1, 128)
    assert feeds[0]["sr"].shape == () and int(feeds[0]["sr"]) == 16000
    rnd = random_input_set(specs, 3, unbatched=sig.unbatched, ranges={"sr": (16000, 16000)})
    assert rnd.arrays["state"].shape == (3, 2, 1, 128) and set(rnd.arrays["sr"].tolist()) == {16000}
    with pytest.raises(errors.CalibrationError, match="no batch axis"):
        validate_inputs({**arrays, "state": np.zeros((5, 2, 128), np.float32)}, None, specs, "bad.npz", sig.unbatched)


def test_option_parsers():
    assert parse_batch_axis("state=-") == ("state", None)
    assert parse_input_range("sr=16000..16000") == ("sr", (16000.0, 16000.0))
    for bad in ("state=1", "sr=9..1", "sr=a..b", "sr"):
        with pytest.raises(errors.InvalidOptionError):
            parse_batch_axis(bad) if "state" in bad else parse_input_range(bad)


def _parity(cos: float, top1: float | None, synthetic: bool = False, max_abs: float = 0.1,
            ref_max: float = 5.0) -> parity.Parity:
    out = parity.OutputParity("y", max_abs, 0.1, cos, top1, reference_max_abs=ref_max, probabilities=top1 is not None)
    return parity.Parity("ref", "rt", "val.npz", synthetic, 10, [out])


def test_gate_thresholds_per_mode_and_overrides():
    assert parity.gate(_parity(0.995, None), "int8").passed
    g = parity.gate(_parity(0.995, None), "fp16")
    assert not g.passed and g.failures == ["cosine 0.9950 < 0.999"]
    assert not parity.gate(_parity(float("nan"), None), "none").passed
    assert not parity.gate(_parity(0.999, 0.80), "int8").passed  # top-1 agreement on real data
    assert parity.gate(_parity(0.999, 0.80, synthetic=True), "int8").passed  # not on random inputs
    assert parity.gate(_parity(0.95, None), "int8", min_cosine=0.9).passed
    assert not parity.gate(_parity(0.999, None), "int8", max_rel_l2=0.05).passed
    # an output that is all but zero: cosine compares rounding noise, the absolute error decides
    assert parity.gate(_parity(0.2, None, max_abs=1e-7, ref_max=1e-6), "none").passed
    assert not parity.gate(_parity(0.2, None, max_abs=1e-3, ref_max=1e-2), "none").passed


def test_top1_agreement_counts_for_classifiers_only():
    """An embedding's argmax means nothing: top-1 is gated for probability rows or when labels give accuracy."""
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((20, 16))
    noisy = emb + 0.05 * rng.standard_normal(emb.shape)
    p = parity.compare({"e": noisy}, {"e": emb}, labels=None, reference="r", runtime="t", inputs="v.npz",
                       synthetic_inputs=False)
    assert p.primary.top1_agreement is not None and not p.primary.probabilities
    assert parity.gate(p, "int8").min_top1 is None
    probs = np.exp(emb) / np.exp(emb).sum(1, keepdims=True)
    p = parity.compare({"p": probs[::-1].copy()}, {"p": probs}, labels=None, reference="r", runtime="t",
                       inputs="v.npz", synthetic_inputs=False)
    assert p.primary.probabilities and parity.gate(p, "int8").min_top1 == 0.95


def test_a_silent_sample_does_not_decide_the_cosine():
    """A detector's map on a blank crop is ~1e-8 everywhere on both sides: its per-sample cosine is rounding noise
    and counts as agreement; the same sample made loud by the artifact, or every sample silenced, still fails."""
    rng = np.random.default_rng(0)
    ref = np.stack([rng.uniform(0, 1, (1, 8, 8)), rng.uniform(0, 3e-8, (1, 8, 8))]).astype(np.float32)
    got = ref + np.stack([rng.normal(0, 1e-4, (1, 8, 8)), rng.uniform(0, 3e-8, (1, 8, 8))]).astype(np.float32)
    dots = np.sum(got[1] * ref[1]) / np.linalg.norm(got[1]) / np.linalg.norm(ref[1])
    assert dots < 0.9999  # the noise alone would fail the fp32 gate
    assert parity.compare_output("map", got, ref).cosine_similarity > 0.9999
    loud = got.copy()
    loud[1] = 0.5
    assert parity.compare_output("map", loud, ref).cosine_similarity < 0.99
    assert parity.compare_output("map", np.zeros_like(ref), ref).cosine_similarity < 0.6
