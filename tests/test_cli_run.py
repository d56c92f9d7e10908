"""`edge run`: inputs from an npz, random inputs, saved outputs, and its errors (exit code 2)."""

from __future__ import annotations

import numpy as np
from typer.testing import CliRunner

import edgelift
from edgelift.cli import app

runner = CliRunner()


def test_run_npz_and_save(digits_onnx, digits_dir, tmp_path):
    out = tmp_path / "out.npz"
    r = runner.invoke(app, ["run", str(digits_onnx), "--input", str(digits_dir / "val.npz"), "--save", str(out)])
    assert r.exit_code == 0, r.output
    assert "[360, 10]" in r.stdout and "onnxruntime" in r.stdout
    saved = np.load(out)["linear_1"]
    x = np.load(digits_dir / "val.npz")["x"]
    np.testing.assert_array_equal(saved, edgelift.load(digits_onnx).run(x)["linear_1"])


def test_run_random_is_seeded(digits_tflite, tmp_path):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    for f in (a, b):
        r = runner.invoke(app, ["run", str(digits_tflite), "--random", "--batch", "3", "--seed", "7", "--save", str(f)])
        assert r.exit_code == 0, r.output
    assert np.load(a)["logits"].shape == (3, 10)
    np.testing.assert_array_equal(np.load(a)["logits"], np.load(b)["logits"])
    assert "litert" in r.stdout


def test_run_errors(digits_onnx, tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, image=np.zeros((2, 1, 8, 8), np.float32))
    cases = [
        (["run", str(digits_onnx)], "exactly one of"),
        (["run", str(digits_onnx), "--random", "--prompt", "hi"], "exactly one of"),
        (["run", str(digits_onnx), "--input", str(bad)], "input names do not match"),
        (["run", str(digits_onnx), "--prompt", "hi"], "needs a language model (GGUF, or ONNX with a key-value cache)"),
        (["run", str(tmp_path / "missing.onnx"), "--random"], "no such file"),
        (["run", str(digits_onnx), "--random", "--backend", "litert"], "runs tflite models, not onnx"),
        (["run", str(digits_onnx), "--random", "--threads", "0"], "threads must be an integer from 1 to"),
    ]
    for args, needle in cases:
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        assert r.stderr.startswith("error:") and needle in " ".join(r.stderr.split()), (args, r.stderr)


def test_run_more_errors(digits_onnx, digits_tflite, tmp_path):
    """Found in review: each of these printed a traceback before."""
    (tmp_path / "adir").mkdir()
    cases = [
        (["run", str(digits_onnx), "--random", "--save", str(tmp_path / "nodir" / "x.npz")], "cannot write"),
        (["run", str(digits_onnx), "--random", "--save", str(tmp_path / "adir")], "cannot write"),
        (["run", str(digits_onnx), "--random", "--batch", "0"], "--batch and --max-tokens must be >= 1"),
        (["run", str(digits_tflite), "--random", "--threads", "100000"], "threads must be an integer from 1 to"),
    ]
    for args, needle in cases:
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        assert needle in " ".join(r.stderr.split()), (args, r.stderr)
    assert not (tmp_path / "nodir").exists()
