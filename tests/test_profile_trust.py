"""Profiles that can be trusted on small models: enough data behind the spread (benchmark_model's minimum
time, timeit's grouping of fast calls), per-op figures set against the measured latency, a warning when a
sweep oversubscribes the CPU, Ctrl-C keeping what was measured, one size convention, bounded JSON."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgelift.core.units import format_bytes
from edgelift.profilers.profile import ProfileOptions, profile
from edgelift.profilers.stats import MAX_STORED_SAMPLES, LatencyStats


def test_minimum_time_and_grouped_samples(digits_result):
    """A ~40 µs model: at least min_time_s of calls, each sample the mean of a group lasting >= min_sample_ns;
    the samples add up to the calls made and to the time spent."""
    path = digits_result.artifact("int8").path
    t0 = time.perf_counter()
    rep = profile(path, ProfileOptions(runs=10, warmup=5, idle_s=0.0, power="none", per_op=False, min_time_s=0.5,
                                       min_sample_ns=1_000_000))
    elapsed = time.perf_counter() - t0
    lat = rep.runs[0]["latency"]
    loops = lat["loops_per_sample"]
    assert loops > 1  # each call is far below 1 ms
    per_sample_s = np.asarray(lat["samples_ns"]) * loops / 1e9
    assert np.all(per_sample_s > 0.0003)  # groups of about 1 ms (sized from the warm-up; the machine's speed drifts)
    covered = lat["t_offsets_s"][-1] + per_sample_s[-1]
    # the minimum time was run (within the ns each per-call mean drops to integer division), and the offsets
    # are real time
    assert 0.5 - 1e-6 <= covered < elapsed
    assert lat["avg_ns"] == pytest.approx(np.mean(lat["samples_ns"]))  # per-call figures, from the samples


def test_stored_samples_are_capped_with_a_histogram_of_all():
    rng = np.random.default_rng(0)
    samples = rng.lognormal(11, 0.3, 10_000).astype(np.int64)
    s = LatencyStats.from_samples(samples, t_offsets_s=np.arange(10_000) * 1e-3)
    assert s.n_samples == 10_000 and len(s.samples_ns) == MAX_STORED_SAMPLES == len(s.t_offsets_s)
    assert s.samples_truncated and s.samples_ns[0] == samples[0] and s.samples_ns[-1] == samples[-1]
    assert sum(s.histogram["counts"]) == 10_000  # every sample is in the histogram
    assert s.median_ns == pytest.approx(float(np.median(samples)))  # statistics over all, not the subset
    small = LatencyStats.from_samples(samples[:50])
    assert not small.samples_truncated and small.samples_ns == [int(x) for x in samples[:50]]


def test_per_op_figures_are_reconciled_with_the_measured_latency(digits_result):
    rep = profile(digits_result.artifact("int8").path, ProfileOptions(runs=30, warmup=3, idle_s=0.0, power="none",
                                                                      min_time_s=0.0))
    r = rep.runs[0]
    ops = r["ops"]
    assert ops["measured_median_ms"] == pytest.approx(r["latency"]["median_ns"] / 1e6)
    assert ops["sum_ms"] == pytest.approx(ops["total_ms"])
    assert ops["sum_over_measured"] == pytest.approx(ops["sum_ms"] / ops["measured_median_ms"])
    assert sum(o["scaled_ms"] for o in ops["by_type"]) == pytest.approx(ops["measured_median_ms"], rel=1e-6)
    ratio = ops["sum_over_measured"]
    flagged = any("per-op times add up to" in w for w in rep.doc["warnings"])
    assert flagged == (not 0.8 <= ratio <= 1.25)
    md = rep.to_markdown()
    assert "share of median ms" in md and f"{ratio:.2f}x" in md


def test_sweep_above_the_core_count_is_flagged(digits_result):
    cores = os.cpu_count() or 1
    rep = profile(digits_result.artifact("int8").path,
                  ProfileOptions(runs=5, warmup=1, idle_s=0.0, power="none", per_op=False, min_time_s=0.0),
                  sweep={"threads": [1, cores + 1]})
    assert any(f"{cores + 1} threads asked on a device with {cores} cores" in w for w in rep.doc["warnings"])
    rep = profile(digits_result.artifact("int8").path,
                  ProfileOptions(runs=5, warmup=1, idle_s=0.0, power="none", per_op=False, min_time_s=0.0),
                  sweep={"threads": [1]})
    assert not any("threads asked" in w for w in rep.doc["warnings"])


def test_ctrl_c_writes_the_partial_report_and_exits_130(digits_result, tmp_path):
    out = tmp_path / "r.json"
    md = tmp_path / "r.md"
    proc = subprocess.Popen([sys.executable, "-m", "edgelift.cli", "profile", str(digits_result.artifact("int8").path),
                             "--duration", "30", "--idle", "0", "--power", "none", "--json", str(out), "--markdown",
                             str(md)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a background job (make test &) inherits SIGINT ignored; a terminal's Ctrl-C is not
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(6)  # loaded and measuring
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert time.monotonic() - t0 < 15  # stopped at once, not after the 30 s budget
    doc = json.loads(out.read_text())
    assert doc["partial"] is True and doc["runs"][0]["latency"]["n_samples"] > 10
    assert any("interrupted (Ctrl-C)" in w for w in doc["warnings"]) and "partial" in md.read_text()
    assert "interrupted" in stderr and "Traceback" not in stderr


def test_one_size_convention_across_console_markdown_and_html(digits_result, tmp_path):
    from typer.testing import CliRunner

    from edgelift.cli import app

    path = Path(digits_result.artifact("int8").path)
    size = format_bytes(path.stat().st_size)
    assert size.endswith(" kB")  # decimal units: 1 kB = 1,000 B
    res = CliRunner().invoke(app, ["profile", str(path), "--runs", "5", "--min-secs", "0", "--idle", "0", "--power",
                                   "none", "--no-per-op", "--markdown", str(tmp_path / "r.md"), "--html",
                                   str(tmp_path / "r.html")])
    assert res.exit_code == 0, res.output
    for text in (res.stdout, (tmp_path / "r.md").read_text(), (tmp_path / "r.html").read_text()):
        assert size in text and "KiB" not in text and "MiB" not in text
