"""The embedded install: `pip install edge-sdk` with no extras (numpy, onnxruntime, typer, rich) in a
clean venv loads and runs the converter's ONNX model, with the same numbers as here."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from tests.venvs import base_venv, device_venv

SCRIPT = """
import importlib.util, sys, numpy as np, edge_sdk
absent = [m for m in ("torch", "onnx", "onnxscript", "coremltools", "transformers", "ai_edge_litert")
          if importlib.util.find_spec(m) is not None]
print("INSTALLED-HEAVY", absent)
x = np.load(sys.argv[2])["x"]
with edge_sdk.load(sys.argv[1]) as m:
    np.save(sys.argv[3], m.run(x)[m.outputs[0].name])
    print("BACKEND", m.backend)
"""


@pytest.mark.slow
def test_base_install_runs_onnx(digits_onnx, digits_dir, tmp_path):
    python = base_venv()
    out = tmp_path / "out.npy"
    r = subprocess.run([str(python), "-c", SCRIPT, str(digits_onnx), str(digits_dir / "val.npz"), str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "INSTALLED-HEAVY []" in r.stdout and "BACKEND onnxruntime" in r.stdout
    import edge_sdk

    x = np.load(digits_dir / "val.npz")["x"]
    np.testing.assert_allclose(np.load(out), edge_sdk.load(digits_onnx).run(x)["linear_1"], atol=1e-6)
    # the console script works there too, and names the extra for formats it cannot run
    cli = python.parent / "edge"
    r = subprocess.run([str(cli), "run", str(digits_onnx), "--random"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "linear_1" in r.stdout, r.stderr
    r = subprocess.run([str(cli), "convert", str(digits_onnx)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "pip install 'edge-sdk[convert]'" in r.stderr, r.stderr


PI_SCRIPT = """
import sys, numpy as np, edge_sdk
print("NUMPY", np.__version__)
x = np.load(sys.argv[2])["x"]
with edge_sdk.load(sys.argv[1], backend="tflite-runtime", threads=2) as m:
    np.save(sys.argv[3], m.run(x)["logits"])
    print("BACKEND", m.backend)
try:
    edge_sdk.load(sys.argv[4], backend="tflite-runtime")
except edge_sdk.errors.IncompatibleBackendError as e:
    print("REFUSED", e)
"""


@pytest.mark.slow
def test_pi_like_venv_runs_real_tflite_runtime(digits_tflite, digits_dir, digits_reference, tmp_path):
    """The real tflite-runtime 2.14 (numpy < 2), as on older Raspberry Pi images: same numbers as torch."""
    from tests.test_runtime import _dynamic_range_fc

    python = device_venv("tflite-runtime", "tflite-runtime")
    out = tmp_path / "out.npy"
    dr = _dynamic_range_fc(tmp_path / "dr.tflite")
    r = subprocess.run([str(python), "-c", PI_SCRIPT, str(digits_tflite), str(digits_dir / "val.npz"), str(out),
                        str(dr)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "NUMPY 1." in r.stdout and "BACKEND tflite-runtime" in r.stdout
    assert "REFUSED" in r.stdout and "dynamic-range quantized" in r.stdout
    np.testing.assert_allclose(np.load(out), digits_reference[1], atol=1e-4)
