"""edge profile: statistics, memory sampling, per-op tables from ONNX Runtime's profiler, LLM metrics,
the JSON schema and the Markdown / CLI views, on models that really run here."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgelift.errors import InvalidOptionError
from edgelift.profilers.profile import ProfileOptions, parse_sweep, profile
from edgelift.profilers.rss import RssSampler
from edgelift.profilers.stats import LatencyStats, rate_stats

# call by call, exactly `runs` of them (the minimum-time and grouping rules have their own tests)
FAST = dict(runs=20, warmup=2, idle_s=0.0, power="none", min_time_s=0.0, min_sample_ns=0)


def test_latency_stats_match_numpy():
    rng = np.random.default_rng(3)
    samples = (rng.lognormal(13, 0.05, 257)).astype(np.int64)
    s = LatencyStats.from_samples(samples, batch=4)
    assert s.n_samples == 257 and s.min_ns == samples.min() and s.max_ns == samples.max()
    assert s.avg_ns == pytest.approx(samples.mean())
    assert s.stddev_ns == pytest.approx(samples.std(ddof=1))
    for q, v in zip((50, 90, 95, 99), (s.median_ns, s.p90_ns, s.p95_ns, s.p99_ns)):
        assert v == pytest.approx(np.percentile(samples, q))
    assert s.cv == pytest.approx(samples.std(ddof=1) / samples.mean())
    assert s.throughput_per_s == pytest.approx(4e9 / samples.mean()) and s.avg_ts == pytest.approx(1e9 / samples.mean())
    assert not s.unreliable  # 5% spread
    wide = LatencyStats.from_samples([1_000_000, 1_000_000, 3_000_000, 1_000_000])
    assert wide.unreliable and wide.cv == pytest.approx(np.std([1, 1, 3, 1], ddof=1) / 1.5)
    assert LatencyStats.from_samples([5]).stddev_ns == 0 and not LatencyStats.from_samples([5]).unreliable
    with pytest.raises(ValueError):
        LatencyStats.from_samples([])


def test_rate_stats_are_per_run_rates():
    avg, std = rate_stats([1e9, 2e9], items=100)  # 100 and 50 tokens/s
    assert avg == pytest.approx(75.0) and std == pytest.approx(np.std([100, 50], ddof=1))


def test_profile_is_public_api():
    import edgelift

    assert edgelift.profile is profile and edgelift.ProfileOptions is ProfileOptions


def test_parse_sweep():
    assert parse_sweep(["threads=1,2,4", "batch=8"]) == {"threads": [1, 2, 4], "batch": [8]}
    for bad in ("threads", "cores=1,2", "threads=a", "threads=0"):
        with pytest.raises(InvalidOptionError):
            parse_sweep([bad])


def test_rss_sampler_sees_a_short_lived_allocation():
    import mmap

    with RssSampler(period_s=0.001) as s:
        base = s.peak
        block = mmap.mmap(-1, 64 << 20)  # fresh anonymous pages: malloc could hand back already-resident ones
        np.frombuffer(block, np.uint8)[:] = 1  # touched: now resident
        seen = s.samples
        deadline = time.time() + 5
        while s.samples < seen + 3 and time.time() < deadline:  # held until the thread has looked (busy hosts)
            time.sleep(0.01)
        block.close()
    assert s.peak - base > 60 << 20


@pytest.fixture(scope="module")
def int8_report(digits_result):
    path = digits_result.artifact("int8").path
    return profile(path, ProfileOptions(**FAST), sweep={"threads": [1, 2]})


def test_profile_onnx_latency_memory_and_ops(int8_report, digits_result):
    doc = int8_report.doc
    assert [r["params"]["threads"] for r in doc["runs"]] == [1, 2]
    for r in doc["runs"]:
        lat = r["latency"]
        assert lat["n_samples"] == 20 and len(lat["samples_ns"]) == 20 and len(lat["t_offsets_s"]) == 20
        assert lat["avg_ns"] == pytest.approx(np.mean(lat["samples_ns"]))
        assert np.all(np.diff(lat["t_offsets_s"]) > 0)
        assert r["load_ns"] > 0 and r["first_ns"] > 0
        mem = r["memory"]
        assert mem["peak_rss_load_bytes"] >= mem["rss_before_load_bytes"] > 0
        ops = r["ops"]
        assert ops["source"] == "onnxruntime" and ops["runs"] == 19  # the session's first run is left out
        types = [o["op_type"] for o in ops["by_type"]]
        assert "QLinearConv" in types  # the int8 model runs quantized kernels
        assert sum(o["percent"] for o in ops["by_type"]) == pytest.approx(100.0)
        assert ops["by_type"][-1]["cumulative_percent"] == pytest.approx(100.0)
        assert [o["avg_ms"] for o in ops["by_type"]] == sorted((o["avg_ms"] for o in ops["by_type"]), reverse=True)
        assert ops["top_nodes"][0]["percent"] <= ops["by_type"][0]["percent"] + 1e-9
        assert sum(o["avg_ms"] for o in ops["by_type"]) == pytest.approx(ops["total_ms"])
        assert r["power"] == {"available": False, "reason": "power sampling was turned off (--power none)"}
    assert doc["model"]["size_bytes"] == Path(digits_result.artifact("int8").path).stat().st_size


def test_profile_json_matches_its_schema(int8_report, tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    from edgelift.profilers.report import SCHEMA_FILE, load_report

    schema = json.loads(SCHEMA_FILE.read_text())
    path = int8_report.write_json(tmp_path / "r.json")
    doc = load_report(path)
    jsonschema.validate(doc, schema)
    broken = json.loads(path.read_text())
    broken["runs"][0]["latency"]["avg_ns"] = "fast"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)
    del broken["runs"][0]["power"]["reason"]
    broken["runs"][0]["latency"]["avg_ns"] = 1.0
    with pytest.raises(jsonschema.ValidationError):  # unavailable power must say why
        jsonschema.validate(broken, schema)


def test_markdown_report_carries_the_figures(int8_report):
    md = int8_report.to_markdown()
    r = int8_report.doc["runs"][0]
    assert f"{r['latency']['median_ns'] / 1e6:.3f}" in md
    assert "not measured — power sampling was turned off" in md
    assert "| QLinearConv |" in md
    assert "0.000 J" not in md


def test_end_to_end_timing_includes_pre_and_post_processing(digits_result):
    path = digits_result.artifact("none").path
    rep = profile(path, ProfileOptions(**{**FAST, "per_op": False}), postprocess=lambda out: time.sleep(0.002))
    r = rep.runs[0]
    assert r["ops"] is None and "turned off" in r["ops_unavailable"]
    assert r["end_to_end"]["avg_ns"] >= 2e6 > r["latency"]["avg_ns"]
    assert r["end_to_end"]["min_ns"] >= 2e6


def test_time_budget_replaces_the_run_count(digits_result):
    rep = profile(digits_result.artifact("int8").path, ProfileOptions(**{**FAST, "duration_s": 0.3, "per_op": False}))
    lat = rep.runs[0]["latency"]
    assert lat["n_samples"] > 20  # a 0.3 s budget of ~0.1 ms runs
    assert 0.25 < lat["t_offsets_s"][-1] + lat["samples_ns"][-1] / 1e9 < 0.6


def test_llm_profile_with_llama_cpp(smollm2_gguf):
    pytest.importorskip("llama_cpp")
    rep = profile(smollm2_gguf, ProfileOptions(n_prompt=16, n_gen=8, repetitions=2, threads=2, idle_s=0.0, power="none"))
    r = rep.runs[0]
    q = r["llm"]
    assert r["backend"] == "llama.cpp" and r["latency_unit"] == "token"
    assert len(q["pp_samples_ns"]) == 2 and len(q["tg_samples_ns"]) == 2
    assert q["pp_avg_ts"] == pytest.approx(np.mean([16e9 / x for x in q["pp_samples_ns"]]))
    assert q["tg_avg_ts"] == pytest.approx(np.mean([8e9 / x for x in q["tg_samples_ns"]]))
    assert q["tpot_ms"] == pytest.approx(np.mean(q["tg_samples_ns"]) / 8 / 1e6)
    assert r["latency"]["n_samples"] == 16  # per generated token
    assert q["ttft_ms"] == pytest.approx(np.mean(q["pp_samples_ns"]) / 1e6, rel=0.01)  # prompt logits -> token 1
    assert r["ops"] is None and r["ops_unavailable"]
    with pytest.raises(InvalidOptionError):
        profile(smollm2_gguf, ProfileOptions(power="none"), sweep={"batch": [1, 2]})


def test_llm_profile_with_the_edge_engine_under_a_memory_budget(smollm2_gguf):
    rep = profile(smollm2_gguf, ProfileOptions(backend="edge", n_prompt=8, n_gen=4, repetitions=1, idle_s=0.0,
                                               power="none", load_options={"memory_budget": "40MB"}))
    q = rep.runs[0]["llm"]
    assert rep.runs[0]["backend"] == "edge" and q["tg_avg_ts"] > 0 and rep.runs[0]["latency"]["n_samples"] == 4
    w = q["weights"]
    assert w["store"] == "FlashWeights" and w["budget_bytes"] == 40_000_000
    assert 0 < w["peak_resident_bytes"] <= 40_000_000 and w["bytes_read"] > 40_000_000  # streamed: read > budget


def test_cli_profile_and_report(digits_result, tmp_path):
    from edgelift.cli import app

    runner = CliRunner()
    paths = []
    for mode in ("int8", "int4"):
        out = tmp_path / f"{mode}.json"
        res = runner.invoke(app, ["profile", str(digits_result.artifact(mode).path), "--runs", "10", "--min-secs", "0", "--min-sample-ms", "0", "--warmup", "1",
                                  "--idle", "0", "--power", "none", "--json", str(out), "--markdown", str(tmp_path / f"{mode}.md"),
                                  "--accuracy", "0.9"])
        assert res.exit_code == 0, res.output
        assert json.loads(out.read_text())["model"]["accuracy"] == 0.9
        paths.append(str(out))
    res = runner.invoke(app, ["report", *paths, "--markdown", str(tmp_path / "cmp.md"), "--html", str(tmp_path / "cmp.html")])
    assert res.exit_code == 0, res.output
    page = (tmp_path / "cmp.html").read_text()
    assert page.count("<svg") >= 2 and "digits.int4.onnx" in page and "<script" not in page
    md = (tmp_path / "cmp.md").read_text()
    assert "digits.int8.onnx" in md and "digits.int4.onnx" in md
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "something-else"}')
    res = runner.invoke(app, ["report", str(bad)])
    assert res.exit_code == 2 and "not an edgelift profile report" in res.output
    res = runner.invoke(app, ["profile", str(digits_result.artifact("int8").path), "--sweep", "cores=2"])
    assert res.exit_code == 2 and "--sweep" in res.output
    res = runner.invoke(app, ["profile"])
    assert res.exit_code == 2 and "edge profile MODEL" in res.output
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    t0 = time.perf_counter()
    res = runner.invoke(app, ["profile", str(digits_result.artifact("int8").path), "--duration", "30", "--json",
                              str(blocker / "r.json")])
    assert res.exit_code == 2 and "cannot write" in res.output and time.perf_counter() - t0 < 10  # checked first
    res = runner.invoke(app, ["profile", str(digits_result.artifact("int8").path), "--duration", "30", "--html",
                              str(tmp_path / "no-such-dir" / "r.html")])
    assert res.exit_code == 2 and "no such directory" in res.output and not (tmp_path / "no-such-dir").exists()
    res = runner.invoke(app, ["profile", "--list-power"])
    assert res.exit_code == 0 and "rapl" in res.output and "jetson-ina3221" in res.output
    res = runner.invoke(app, ["profile", str(digits_result.artifact("int8").path), "--power", "no-such-meter",
                              "--runs", "2", "--min-secs", "0", "--idle", "0"])
    assert res.exit_code == 2, res.output


def test_power_and_energy_from_a_replayed_rapl_counter(digits_result, tmp_path):
    """Replays the RAPL powercap format (device-power.md: ``intel-rapl:0/energy_uj``, cumulative µJ) in a temp
    tree, since this host exposes no RAPL: a writer thread advances the counter at 2 W until the measured runs
    start and at 5 W during them, so idle power, average power and energy above idle have known values."""
    import threading

    from edgelift.profilers.power import DeviceEnv

    dom = tmp_path / "sys/class/powercap/intel-rapl:0"
    dom.mkdir(parents=True)
    (dom / "name").write_text("package-0\n")
    (dom / "max_energy_range_uj").write_text("262143328850\n")
    (dom / "energy_uj").write_text("1000\n")
    busy, stop = threading.Event(), threading.Event()

    def writer():
        energy, last = 1000.0, time.monotonic()
        while not stop.wait(0.002):
            now = time.monotonic()
            energy += (5.0 if busy.is_set() else 2.0) * 1e6 * (now - last)
            last = now
            tmp = dom / "energy_uj.tmp"
            tmp.write_text(f"{int(energy)}\n")
            tmp.replace(dom / "energy_uj")

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        rep = profile(digits_result.artifact("int8").path,
                      ProfileOptions(runs=20, warmup=2, idle_s=0.6, power="rapl", per_op=False, min_time_s=0.0, min_sample_ns=0),
                      power_env=DeviceEnv(root=tmp_path),
                      progress=lambda stage, done, total: busy.set() if stage == "runs" else None)
    finally:
        stop.set()
        t.join()
    p = rep.runs[0]["power"]
    lat = rep.runs[0]["latency"]
    assert p["available"] and p["source"] == "rapl"
    assert p["idle_w"] == pytest.approx(2.0, rel=0.15)
    assert p["avg_w"] == pytest.approx(5.0, rel=0.15)
    assert p["measured_s"] >= 1.0 - 1e-3  # the window was extended to 10 sample periods at 10 Hz
    assert lat["n_samples"] > 20  # ...by running more than the 20 runs asked for
    assert p["energy_j"] == pytest.approx(p["avg_w"] * p["measured_s"])
    assert p["energy_per_inference_j"] == pytest.approx(p["energy_j"] / lat["n_samples"])
    assert p["energy_above_idle_j"] == pytest.approx((p["avg_w"] - p["idle_w"]) * p["measured_s"])
    assert 0.5 * p["measured_s"] * 10 <= p["n_samples"] <= p["measured_s"] * 10 + 2
    tl = p["timeline"]
    assert len(tl["t_s"]) == len(tl["w"]) == len(tl["phase"]) and {"idle", "measured"} <= set(tl["phase"])
    assert p["energy_per_token_j"] is None
    md = rep.to_markdown()
    assert f"{p['avg_w']:.2f} W" in md and "above idle" in md
    assert "power:" not in " ".join(rep.doc["warnings"])


def test_profile_tflite_says_why_there_is_no_op_table(digits_tflite, monkeypatch):
    pytest.importorskip("ai_edge_litert")
    monkeypatch.setenv("PATH", "/nonexistent")  # no benchmark_model to be found
    rep = profile(digits_tflite, ProfileOptions(**FAST))
    r = rep.runs[0]
    assert r["backend"] == "litert" and r["latency"]["n_samples"] == 20
    assert r["ops"] is None and "benchmark_model" in r["ops_unavailable"]
    assert rep.doc["model"]["format"] == "tflite" and rep.doc["model"]["accuracy"] is None


def test_profile_tflite_op_table_from_benchmark_model(digits_tflite, tmp_path):
    """benchmark_model is not installed here: a stand-in replays a REAL --enable_op_profiling log
    (tests/data/captures, MobileNetV1 on riscv64, the older tab-separated layout) after checking it was
    asked for the right graph and flags. The capture's by-type summary starts with CONV_2D."""
    pytest.importorskip("ai_edge_litert")
    fake = tmp_path / "benchmark_model"
    transcript = Path(__file__).parent / "data" / "captures" / "benchmark_model-op-profiling-linux-riscv64-qemu.txt"
    fake.write_text(f"#!{sys.executable}\nimport sys\nargs = sys.argv[1:]\n"
                    f"assert '--graph={digits_tflite}' in args and '--enable_op_profiling=true' in args, args\n"
                    f"assert '--num_threads=2' in args, args\n"
                    f"print(open({str(transcript)!r}).read())\n")
    fake.chmod(0o755)
    rep = profile(digits_tflite, ProfileOptions(**{**FAST, "benchmark_model": str(fake), "threads": 2}))
    ops = rep.runs[0]["ops"]
    assert ops["source"] == "benchmark_model" and rep.runs[0]["ops_unavailable"] is None
    assert ops["by_type"][0]["op_type"] == "CONV_2D" and ops["by_type"][-1]["cumulative_percent"] == pytest.approx(100, abs=0.01)
    bad = tmp_path / "broken"
    bad.write_text("#!/bin/sh\necho 'ERROR: Could not open graph' >&2\nexit 1\n")
    bad.chmod(0o755)
    rep = profile(digits_tflite, ProfileOptions(**{**FAST, "benchmark_model": str(bad)}))
    assert rep.runs[0]["ops"] is None and "Could not open graph" in rep.runs[0]["ops_unavailable"]


def test_profile_under_a_memory_budget_records_the_plan_and_keeps_per_op_times(digits_result, tmp_path):
    """``edge profile --memory-budget``: the JSON (schema-valid), Markdown and HTML carry the budget, the
    planned and measured peaks and the extra compute, and the per-op table is the patched schedule's."""
    jsonschema = pytest.importorskip("jsonschema")
    from edgelift.profilers.report import SCHEMA_FILE, load_report
    from edgelift.runtimes.memory import load_graph, plan_memory

    path = digits_result.artifact("int8").path
    budget = int(plan_memory(load_graph(path)[0]).peak_bytes * 0.8)
    rep = profile(path, ProfileOptions(**{**FAST, "load_options": {"memory_budget": budget}}))
    run = rep.doc["runs"][0]
    b = run["memory"]["budget"]
    assert b["budget_bytes"] == budget and b["patched"] and b["planned_peak_bytes"] <= budget < b["plain_peak_bytes"]
    assert b["extra_compute"] >= 1.0 and b["stages"]
    types = {o["op_type"] for o in run["ops"]["by_type"]}
    assert run["ops"]["source"] == "onnxruntime" and "QLinearConv" in types
    assert "Slice" in types and "Concat" in types  # the patches' crops and the assembly of their pieces
    jsonschema.validate(load_report(rep.write_json(tmp_path / "r.json")), json.loads(SCHEMA_FILE.read_text()))
    assert "## Memory budget (patch-based inference)" in rep.to_markdown()
    assert "activation peak, planned" in rep.write_html(tmp_path / "r.html").read_text()
