"""The embedded install: edgelift with no extras (numpy, onnxruntime, typer, rich), installed from the wheel
file `make wheel` builds (never from a registry by name) into a clean venv, loads and runs the converter's
ONNX model with the same numbers as here, and its `edge` does the device jobs: inspect, run, profile, plan."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from tests.venvs import base_venv, device_venv

SCRIPT = """
import importlib.util, sys, numpy as np, edgelift
absent = [m for m in ("torch", "onnx", "onnxscript", "coremltools", "transformers", "ai_edge_litert")
          if importlib.util.find_spec(m) is not None]
print("INSTALLED-HEAVY", absent)
print("FROM", edgelift.__file__)
x = np.load(sys.argv[2])["x"]
with edgelift.load(sys.argv[1]) as m:
    np.save(sys.argv[3], m.run(x)[m.outputs[0].name])
    print("BACKEND", m.backend)
"""


@pytest.mark.slow
def test_base_install_runs_onnx(digits_onnx, digits_dir, tmp_path):
    python = base_venv()
    out = tmp_path / "out.npy"
    r = subprocess.run([str(python), "-c", SCRIPT, str(digits_onnx), str(digits_dir / "val.npz"), str(out)],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "INSTALLED-HEAVY []" in r.stdout and "BACKEND onnxruntime" in r.stdout
    assert f"FROM {python.parent.parent}" in r.stdout  # the installed wheel, not this checkout
    import edgelift

    x = np.load(digits_dir / "val.npz")["x"]
    np.testing.assert_allclose(np.load(out), edgelift.load(digits_onnx).run(x)["linear_1"], atol=1e-6)
    # the console script works there too, and names the extra for formats it cannot run
    cli = python.parent / "edge"
    r = subprocess.run([str(cli), "run", str(digits_onnx), "--random"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0 and "linear_1" in r.stdout, r.stderr
    r = subprocess.run([str(cli), "convert", str(digits_onnx)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 2 and "pip install '.[convert]' in the edgelift clone" in r.stderr, r.stderr


@pytest.mark.slow
def test_base_install_does_the_device_jobs(digits_result, digits_tflite, tmp_path):
    """inspect (ONNX and TFLite, read by the project's own codecs: no onnx package), run, profile and plan."""
    python = base_venv()
    cli = python.parent / "edge"
    meta = subprocess.run([str(python), "-c", "import importlib.metadata as m, json; d = m.distribution('edgelift');"
                           "print(json.dumps([d.read_text('direct_url.json'), d.version]))"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    direct_url, version = json.loads(meta.stdout)
    assert json.loads(direct_url)["url"].endswith(f"edgelift-{version}-py3-none-any.whl")  # a wheel file, not a name
    int8 = digits_result.artifact("int8").path
    r = subprocess.run([str(cli), "inspect", str(int8)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "parameters=40,394" in r.stdout and "QLinearConv" not in r.stdout and "DequantizeLinear" in r.stdout
    assert "int8 per-channel" in r.stdout  # the quantization summary, from the codec
    import edgelift

    here = edgelift.inspect(int8)  # the same report where onnx is installed
    assert f"parameters={here.parameters:,}" in r.stdout and all(op in r.stdout for op in here.op_histogram)
    r = subprocess.run([str(cli), "inspect", str(digits_tflite)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0 and "format=tflite" in r.stdout, r.stderr
    r = subprocess.run([str(cli), "profile", str(int8), "--runs", "20", "--min-secs", "0.2", "--idle", "0",
                        "--power", "none", "-o", "json"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["runs"][0]["backend"] == "onnxruntime" and doc["runs"][0]["ops"]["by_type"]
    r = subprocess.run([str(cli), "plan", str(int8)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0 and "peak" in r.stdout, r.stderr


PI_SCRIPT = """
import sys, numpy as np, edgelift
print("NUMPY", np.__version__)
x = np.load(sys.argv[2])["x"]
with edgelift.load(sys.argv[1], backend="tflite-runtime", threads=2) as m:
    np.save(sys.argv[3], m.run(x)["logits"])
    print("BACKEND", m.backend)
try:
    edgelift.load(sys.argv[4], backend="tflite-runtime")
except edgelift.errors.IncompatibleBackendError as e:
    print("REFUSED", e)
"""


@pytest.mark.slow
def test_pi_like_venv_runs_real_tflite_runtime(digits_tflite, digits_dir, digits_reference, tmp_path):
    """The real tflite-runtime 2.14 (numpy < 2), as on older Raspberry Pi images: same numbers as torch."""
    from tests.builders import dynamic_range_fc

    python = device_venv("tflite-runtime", "tflite-runtime")
    out = tmp_path / "out.npy"
    dr = dynamic_range_fc(tmp_path / "dr.tflite")
    r = subprocess.run([str(python), "-c", PI_SCRIPT, str(digits_tflite), str(digits_dir / "val.npz"), str(out),
                        str(dr)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "NUMPY 1." in r.stdout and "BACKEND tflite-runtime" in r.stdout
    assert "REFUSED" in r.stdout and "dynamic-range quantized" in r.stdout
    np.testing.assert_allclose(np.load(out), digits_reference[1], atol=1e-4)
