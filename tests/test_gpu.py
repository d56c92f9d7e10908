"""CUDA / TensorRT execution providers and NVML power: what runs without a GPU, and what waits for one.

Issue 20 asks for a real GPU run recorded as a fixture. The session that wrote this had no GPU machine
(the task was not lent one), so ``tests/data/captures/gpu/`` does not exist yet:
``test_replayed_gpu_capture`` skips saying so, and ``test_live_cuda_profile_with_nvml`` skips unless
this machine has onnxruntime-gpu, nvidia-ml-py and a GPU. ``tests/capture_gpu.py`` records the capture
on such a machine. Provider selection and the TensorRT options are plain functions and run everywhere;
per-node placement runs on a real CPU trace in tests/test_placement.py.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from edgelift.errors import InvalidOptionError
from edgelift.runtimes.ort import resolve_providers, tensorrt_options

GPU_CAPTURE = Path(__file__).parent / "data" / "captures" / "gpu"
GPU_BUILD = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_tensorrt_gets_an_engine_cache_by_default(tmp_path, monkeypatch):
    """Without a cache every load() rebuilds the TensorRT engine (minutes on a Jetson): --ep tensorrt
    turns the engine and timing caches on under the edgelift cache; the CPU provider stays last."""
    monkeypatch.setenv("EDGELIFT_CACHE", str(tmp_path))
    got = resolve_providers(["tensorrt", "cuda"], GPU_BUILD, "1.x")
    assert got[0] == ("TensorrtExecutionProvider", {
        "trt_engine_cache_enable": "True", "trt_engine_cache_path": str(tmp_path / "tensorrt"),
        "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(tmp_path / "tensorrt")})
    assert got[1:] == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_tensorrt_short_options_and_cache_off(tmp_path, monkeypatch):
    """trtexec's words (fp16, int8, an engine cache directory) map to ONNX Runtime's trt_* options; full
    names pass through; trt_engine_cache_enable=False turns the default cache off."""
    monkeypatch.setenv("EDGELIFT_CACHE", str(tmp_path))
    opts = tensorrt_options({"fp16": "1", "int8": "True", "engine_cache": "/data/engines", "trt_max_partition_iterations": "10"})
    assert opts["trt_fp16_enable"] == "1" and opts["trt_int8_enable"] == "True"
    assert opts["trt_engine_cache_path"] == "/data/engines" and opts["trt_timing_cache_path"] == "/data/engines"
    assert opts["trt_max_partition_iterations"] == "10" and "fp16" not in opts
    off = tensorrt_options({"trt_engine_cache_enable": "False"})
    assert off == {"trt_engine_cache_enable": "False"}


def test_cuda_on_a_cpu_build_is_refused_with_the_package_to_install():
    with pytest.raises(InvalidOptionError, match="install onnxruntime-gpu instead of onnxruntime"):
        resolve_providers(["cuda"], ["CPUExecutionProvider"], "1.x")
    with pytest.raises(InvalidOptionError, match=r"onnxruntime-gpu \(with TensorRT\)"):
        resolve_providers([("tensorrt", {"fp16": "1"})], ["CUDAExecutionProvider", "CPUExecutionProvider"], "1.x")


def test_replayed_gpu_capture():
    """Replays tests/capture_gpu.py's output: the CUDA trace places the convolutions on CUDA, the report
    has NVML power above idle and energy per inference."""
    if not (GPU_CAPTURE / "profile-cuda-nvml.json").exists():
        pytest.skip("no GPU capture: the session that wrote this had no GPU machine; run tests/capture_gpu.py "
                    "on one and commit tests/data/captures/gpu/")
    from edgelift.profilers.perop import from_ort_trace, read_ort_trace
    from edgelift.profilers.report import load_report

    prof = from_ort_trace(read_ort_trace(GPU_CAPTURE / "ort-cuda-trace.json"))
    shares = {p.provider: p.nodes for p in prof.providers}
    assert shares.get("CUDAExecutionProvider", 0) >= 3  # the three Conv nodes at least
    doc = load_report(GPU_CAPTURE / "profile-cuda-nvml.json")
    p = doc["runs"][0]["power"]
    assert p["available"] and p["source"] == "nvml" and p["avg_w"] > p["idle_w"] > 0
    assert p["energy_per_inference_above_idle_j"] > 0


def _has_gpu() -> str | None:
    """None when a CUDA session and NVML can run here, else why not."""
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (install onnxruntime-gpu)"
    if importlib.util.find_spec("pynvml") is None:
        return "nvidia-ml-py (pynvml) is not installed"
    return None


def test_live_cuda_profile_with_nvml(tmp_path):
    """On a GPU machine: edge profile --ep cuda --power nvml gives power above idle and a CUDA placement."""
    why = _has_gpu()
    if why:
        pytest.skip(f"no GPU here: {why}; the session that wrote this test had no GPU machine")
    import importlib

    capture = importlib.import_module("tests.capture_gpu")
    model = capture.build_model(tmp_path / "m.onnx")
    from edgelift.profilers.profile import ProfileOptions, profile

    rep = profile(model, ProfileOptions(runs=100, warmup=10, min_time_s=2.0, idle_s=1.0, power="nvml",
                                        load_options={"providers": ["cuda"]}))
    run = rep.runs[0]
    assert run["power"]["available"] and run["power"]["source"] == "nvml"
    assert {p["provider"] for p in run["ops"]["providers"]} >= {"CUDAExecutionProvider"}
    json.dumps(rep.doc, allow_nan=False)
