"""The flags users bring from llama-bench, llama-cli, benchmark_model, trtexec and optimum exist in `edge`
and mean what they mean there — each asserted by what it does, not only by its name."""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import typer.main
from typer.testing import CliRunner

import edgelift
from edgelift.cli import app
from edgelift.core.hub_cache import resolve_model_file
from edgelift.errors import ModelNotFoundError

QUICK = ["--runs", "5", "--min-secs", "0", "--warmup", "1", "--idle", "0", "--power", "none", "--no-per-op"]


def _option(command: str, flag: str):
    cmd = typer.main.get_command(app).commands[command]
    return next((p for p in cmd.params if flag in p.opts or flag in p.secondary_opts), None)


@pytest.mark.parametrize("command,flag,dest", [
    ("profile", "-p", "n_prompt"), ("profile", "-n", "n_gen"), ("profile", "-r", "repetitions"),
    ("profile", "-t", "threads"), ("profile", "-b", "batch"), ("profile", "-ngl", "n_gpu_layers"),
    ("profile", "-o", "output"), ("profile", "--ep", "ep"), ("profile", "--providers", "ep"),
    ("profile", "--delegate", "delegate"), ("profile", "--min-secs", "min_secs"), ("profile", "--runs", "runs"),
    ("run", "-p", "prompt"), ("run", "-n", "max_tokens"), ("run", "-ngl", "n_gpu_layers"), ("run", "--ep", "ep"),
    ("run", "--delegate", "delegate"), ("run", "-c", "n_ctx"), ("convert", "-q", "quantize"),
])
def test_flag_exists_with_the_fields_meaning(command, flag, dest):
    """llama-bench: -p prompt tokens, -n generated tokens, -r repetitions, -t threads, -ngl GPU layers, -o format;
    llama-cli (edge run): -p prompt text, -n tokens to predict, -c context; benchmark_model: --min_secs."""
    opt = _option(command, flag)
    assert opt is not None and opt.name == dest


def test_help_screens_are_grouped_and_have_clean_placeholders():
    runner = CliRunner()
    for command in ("convert", "inspect", "run", "plan", "profile", "report", "devices"):
        out = runner.invoke(app, [command, "--help"], terminal_width=120).output
        assert not re.search(r"<(bool|list\[str\]|str|path|int|float)>", out, re.I), (command, out)
    prof = runner.invoke(app, ["profile", "--help"], terminal_width=120).output
    for panel in ("Measurement", "Language models", "Backend", "Output", "Remote devices"):
        assert panel in prof
    assert "[[device]]" in prof  # not eaten by the markup


def test_output_formats_on_stdout(digits_result):
    model = str(digits_result.artifact("int8").path)
    runner = CliRunner()
    res = runner.invoke(app, ["profile", model, *QUICK, "-o", "json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["schema"] == "edgelift/profile" and doc["runs"][0]["latency"]["n_samples"] >= 1
    res = runner.invoke(app, ["profile", model, *QUICK, "-o", "csv", "-t", "1,2"])
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert [r["threads"] for r in rows] == ["1", "2"]  # -t 1,2: one setting each, as llama-bench -t 1,2
    assert float(rows[0]["median_ns"]) == pytest.approx(doc["runs"][0]["latency"]["median_ns"], rel=2.0)
    res = runner.invoke(app, ["profile", model, *QUICK, "-o", "md"])
    assert res.stdout.startswith("# digits.int8.onnx") and "## Latency" in res.stdout
    res = runner.invoke(app, ["profile", model, *QUICK, "-o", "yaml"])
    assert res.exit_code == 2 and "choose one of table, json, md, csv" in res.output


def test_repetitions_are_llama_bench_tests_not_runs(digits_result):
    res = CliRunner().invoke(app, ["profile", str(digits_result.artifact("int8").path), *QUICK, "-r", "3"])
    assert res.exit_code == 2 and "--runs" in res.output and "GGUF" in res.output


def test_prompt_and_generation_lists_like_llama_bench(smollm2_gguf):
    res = CliRunner().invoke(app, ["profile", str(smollm2_gguf), "-p", "8,16", "-n", "4", "-r", "2", "-t", "2",
                                   "--idle", "0", "--power", "none", "--warmup", "0", "-o", "json"])
    assert res.exit_code == 0, res.output
    runs = json.loads(res.stdout)["runs"]
    assert [(r["llm"]["n_prompt"], r["llm"]["n_gen"], r["llm"]["repetitions"]) for r in runs] == [(8, 4, 2), (16, 4, 2)]
    assert all(len(r["llm"]["pp_samples_ns"]) == 2 for r in runs)


def test_gpu_layers_refused_on_a_cpu_build_of_llama_cpp(smollm2_gguf):
    import llama_cpp

    from edgelift.runtimes.rpc import local_gpu_count

    if llama_cpp.llama_supports_gpu_offload() and (not llama_cpp.llama_supports_rpc() or local_gpu_count()):
        pytest.skip("this llama.cpp has a GPU backend")
    res = CliRunner().invoke(app, ["run", str(smollm2_gguf), "-p", "Hi", "-n", "2", "-ngl", "99"])
    assert res.exit_code == 2 and "no GPU backend" in res.output


def test_execution_providers_by_short_name(digits_result, tmp_path):
    import onnxruntime as ort

    import edgelift

    model = digits_result.artifact("none").path
    with edgelift.load(model, providers=["cpu"]) as m:
        assert m.session.providers == ["CPUExecutionProvider"]
    res = CliRunner().invoke(app, ["run", str(model), "--random", "--ep", "cpu"])
    assert res.exit_code == 0, res.output
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    res = CliRunner().invoke(app, ["run", str(model), "--random", "--ep", "tensorrt,cuda",
                                   "--ep-option", "tensorrt:trt_fp16_enable=True"])
    assert res.exit_code == 2 and "onnxruntime-gpu" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["run", str(model), "--random", "--ep", "cpu", "--ep-option", "cuda:device_id=0"])
    assert res.exit_code == 2 and "--ep does not name" in res.output


def test_litert_delegates(digits_tflite, digits_dir):
    pytest.importorskip("ai_edge_litert")
    import edgelift

    x = np.load(digits_dir / "val.npz")["x"][:4]
    with edgelift.load(digits_tflite, delegate="none") as plain, edgelift.load(digits_tflite) as xnn:
        assert plain.session.delegate == "none" and xnn.session.delegate == "xnnpack"
        a, b = plain.run(x), xnn.run(x)
    np.testing.assert_allclose(a["logits"], b["logits"], atol=1e-4)
    res = CliRunner().invoke(app, ["run", str(digits_tflite), "--random", "--delegate", "gpu"])
    assert res.exit_code == 2 and "libtensorflowlite_gpu_delegate.so" in res.output and "--delegate xnnpack" in res.output


def test_comma_list_of_modes(digits_result, tmp_path):
    res = CliRunner().invoke(app, ["convert", str(digits_result.artifact("none").path), "-q", "int8-dynamic,fp16",
                                   "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "out").glob("*.onnx")) == ["digits.fp16.onnx", "digits.int8-dynamic.onnx"]


def test_batch_on_a_fixed_batch_model_is_refused_not_ignored(tmp_path):
    from onnx import TensorProto, helper, save

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "fixed.onnx")
    res = CliRunner().invoke(app, ["run", str(tmp_path / "fixed.onnx"), "--random", "--batch", "4"])
    assert res.exit_code == 2 and "fixed batch of 1" in res.output
    res = CliRunner().invoke(app, ["run", str(tmp_path / "fixed.onnx"), "--random"])
    assert res.exit_code == 0 and "[1, 4]" in res.output


def test_misleading_messages_fixed(digits_result, digits_dir, tmp_path):
    runner = CliRunner()
    model = str(digits_result.artifact("int8").path)
    res = runner.invoke(app, ["run", model, "--input", str(tmp_path)])
    assert res.exit_code == 2 and "is a directory" in res.output and "calibration" not in res.output
    res = runner.invoke(app, ["inspect", str(digits_dir / "calib.npz")])
    assert res.exit_code == 2 and ".npz archive" in res.output and "torch.export.save" not in res.output
    res = runner.invoke(app, ["plan", str(digits_dir / "digits.pt2")])
    assert res.exit_code == 2 and "convert it first" in res.output and "wire type" not in res.output


def test_hugging_face_ids_come_from_the_local_cache_only(tmp_path, monkeypatch):
    """A hub id resolves to its cached snapshot (huggingface_hub's layout); an id that is not cached is refused
    with the command that fetches it — nothing is downloaded."""
    from edgelift.core.hub_cache import resolve_repo_id

    hub = tmp_path / "hub"
    snap = hub / "models--Org--Tiny" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (hub / "models--Org--Tiny" / "refs").mkdir()
    (hub / "models--Org--Tiny" / "refs" / "main").write_text("abc123\n")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.chdir(tmp_path)
    assert resolve_repo_id("Org/Tiny") == snap
    with pytest.raises(ModelNotFoundError, match="hf download Org/Missing"):
        resolve_repo_id("Org/Missing")
    res = CliRunner().invoke(app, ["convert", "Org/Missing", "--to", "gguf", "-q", "F16", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "never downloads" in res.output
    assert not (tmp_path / "o").exists()


def test_model_files_of_cached_repositories_run_by_id(smollm2_gguf, tmp_path, monkeypatch):
    """``edgelift.load`` / ``edge run`` / ``edge inspect`` take ``ORG/NAME[:PICK]`` for a repository already in the
    Hugging Face cache (files are symlinks to blobs there, as huggingface_hub lays them out): one file is
    chosen by a part of its name (llama.cpp's ``-hf ORG/NAME:Q4_K_M``), several are refused with the list,
    split GGUF files count once, and nothing is downloaded."""
    pytest.importorskip("llama_cpp")
    hub = tmp_path / "hub"
    snap = hub / "models--Org--Smol-GGUF" / "snapshots" / "c0ffee"
    snap.mkdir(parents=True)
    (hub / "models--Org--Smol-GGUF" / "refs").mkdir()
    (hub / "models--Org--Smol-GGUF" / "refs" / "main").write_text("c0ffee")
    for name in ("smol.Q4_1.gguf", "smol.Q8_0.gguf", "big/smol.F16-00001-of-00002.gguf",
                 "big/smol.F16-00002-of-00002.gguf"):
        (snap / name).parent.mkdir(parents=True, exist_ok=True)
        (snap / name).symlink_to(smollm2_gguf)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError, match=r"holds 3 model files .*big/smol.F16-00001-of-00002.gguf.*smol.Q4_1.gguf"
                                                 r".*pick one with Org/Smol-GGUF:PART"):
        edgelift.load("Org/Smol-GGUF")
    assert resolve_model_file("Org/Smol-GGUF:f16") == snap / "big" / "smol.F16-00001-of-00002.gguf"
    with pytest.raises(ModelNotFoundError, match="holds no .*matching 'Q5_K_M'"):
        resolve_model_file("Org/Smol-GGUF:Q5_K_M")
    with edgelift.load("Org/Smol-GGUF:q4_1", backend="llama.cpp") as m:
        assert m.path == snap / "smol.Q4_1.gguf" and m.generate("Hello", max_tokens=2)
    runner = CliRunner()
    res = runner.invoke(app, ["run", "Org/Smol-GGUF:Q4_1", "-p", "Hello", "-n", "2"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["inspect", "Org/Smol-GGUF:Q8_0"])
    assert res.exit_code == 0 and "format=gguf" in res.output, res.output
    res = runner.invoke(app, ["run", "Org/Missing:Q4_1", "-p", "Hello"])
    assert res.exit_code == 2 and "hf download Org/Missing" in res.output and "Traceback" not in res.output


def test_prompt_lists_are_refused_for_a_tflite_model_on_a_phone(tmp_path):
    """-p/-n lists are llama-bench's: on a phone a .tflite model refuses them before anything connects
    (-t lists run there, one benchmark_model per setting: tests/test_remote_adb.py)."""
    tfl = tmp_path / "m.tflite"
    tfl.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(200))
    bm = tmp_path / "benchmark_model"
    bm.write_bytes(b"\x7fELF" + bytes(100))
    res = CliRunner().invoke(app, ["profile", str(tfl), "--device", "adb://SERIAL", "-p", "128,512",
                                   "--device-binary", str(bm)])
    assert res.exit_code == 2 and "language models (GGUF, ONNX decoders) only" in res.output


def test_report_prints_json_md_csv(digits_result, tmp_path):
    runner = CliRunner()
    files = []
    for mode in ("int8", "int4"):
        out = tmp_path / f"{mode}.json"
        res = runner.invoke(app, ["profile", str(digits_result.artifact(mode).path), *QUICK, "--json", str(out)])
        assert res.exit_code == 0, res.output
        files.append(str(out))
    rows = json.loads(runner.invoke(app, ["report", *files, "-o", "json"]).stdout)
    assert [r["label"] for r in rows] == ["digits.int8.onnx", "digits.int4.onnx"]
    table = list(csv.DictReader(io.StringIO(runner.invoke(app, ["report", *files, "-o", "csv"]).stdout)))
    assert float(table[1]["median_ns"]) == pytest.approx(rows[1]["median_ns"])
    assert runner.invoke(app, ["report", *files, "-o", "md"]).stdout.startswith("# Profile comparison")
