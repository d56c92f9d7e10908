"""``edge profile``: measure a model on this device through the runtime layer, one report for all of it.

Per setting of a sweep (threads, batch) the order is: load (timed, peak RSS sampled), first inference
(timed apart: it pays lazy initialisation), warm-up runs, an idle power baseline, the measured runs
(latency per run; RSS and power sampled on background threads), then a separate pass with the
backend's op profiler on (tracing would distort the latency runs). GGUF language models are measured
as llama-bench does: ``n_prompt`` random tokens processed at once, then ``n_gen`` tokens one by one.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import itertools
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import __version__
from ..core.atomic import path_size
from ..runtimes.onnx_llm import is_language_model_file
from ..core.formats import ModelFormat, detect_format
from ..errors import InvalidOptionError
from .report import SCHEMA, SCHEMA_VERSION, ProfileReport
from .rss import RssSampler, current_rss
from .stats import LatencyStats, rate_stats

SWEEPABLE = ("threads", "batch", "n_prompt", "n_gen")  # n_prompt/n_gen: GGUF only (llama-bench's -p/-n lists)
# A sample shorter than this is noise-dominated (timer resolution, scheduler ticks, a shared host's stolen
# time): faster models are timed in groups of consecutive calls lasting about this long, the group's mean being
# one sample (timeit, pyperf: 100 ms). On a 2-core VM a bare ONNX Runtime loop over a 40 µs model measured cv
# 0.22-0.34 in 2 ms groups, 0.05-0.11 in 10 ms and 0.016-0.035 in 20 ms ones: the noise lives at the
# millisecond scale. 20 ms leaves 100 samples in the default 2 s.
MIN_SAMPLE_NS = 20_000_000
Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class ProfileOptions:
    """What to measure. ``duration_s`` (a time budget) replaces ``runs`` when given."""

    runs: int = 100  # at least this many calls...
    warmup: int = 10
    duration_s: float | None = None  # a time budget instead of runs / min_time_s
    min_time_s: float = 2.0  # ...and at least this long (benchmark_model's --min_secs), so cv rests on enough data
    min_sample_ns: int = MIN_SAMPLE_NS  # calls shorter than this are timed in groups this long (0: call by call)
    threads: int | None = None
    batch: int = 1
    backend: str = "auto"
    per_op: bool = True
    top: int = 10
    power: str = "auto"
    power_rate_hz: float = 10.0
    idle_s: float = 2.0
    n_prompt: int = 128
    n_gen: int = 64
    repetitions: int = 3
    seed: int = 0
    input: Path | None = None  # FILE.npz: its first ``batch`` samples instead of random inputs
    accuracy: float | None = None  # carried into the report for Pareto plots (e.g. from a parity report)
    benchmark_model: str | None = None  # .tflite per-op time: LiteRT's benchmark_model (default: on PATH)
    load_options: dict[str, Any] = field(default_factory=dict)
    remote: Any = None  # RemoteOptions (ssh config, device Python) to read RPC servers' memory over ssh:// urls

    def check(self) -> None:
        if self.runs < 1 or self.warmup < 0 or self.batch < 1 or self.repetitions < 1:
            raise InvalidOptionError("runs, batch and repetitions must be >= 1 and warmup >= 0")
        if self.min_sample_ns < 0:
            raise InvalidOptionError(f"--min-sample-ms must be >= 0, got {self.min_sample_ns / 1e6}")
        if self.min_time_s < 0:
            raise InvalidOptionError(f"--min-secs must be >= 0, got {self.min_time_s}")
        if self.duration_s is not None and self.duration_s <= 0:
            raise InvalidOptionError(f"the time budget must be positive, got {self.duration_s} s")
        if self.n_prompt < 1 or self.n_gen < 1:
            raise InvalidOptionError(f"-p and -n must be >= 1, got {self.n_prompt} and {self.n_gen}")
        if not 0 < self.power_rate_hz <= 1000:
            raise InvalidOptionError(f"the power sampling rate must be in (0, 1000] Hz, got {self.power_rate_hz}")
        if self.idle_s < 0:
            raise InvalidOptionError(f"the idle baseline must be >= 0 s, got {self.idle_s}")


def parse_int_list(text: str) -> list[int] | None:
    """``"1,2,4"`` -> ``[1, 2, 4]``; None unless every value is an integer >= 1 (callers name their flag)."""
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        return None
    return values if values and min(values) >= 1 else None


def parse_sweep(specs: list[str]) -> dict[str, list[int]]:
    """``["threads=1,2,4", "batch=1,8"]`` -> {"threads": [1, 2, 4], "batch": [1, 8]}."""
    out: dict[str, list[int]] = {}
    for spec in specs:
        key, _, values = spec.partition("=")
        key = key.strip()
        if key not in SWEEPABLE or not values:
            raise InvalidOptionError(f"--sweep {spec!r}: write NAME=V1,V2 with NAME one of {', '.join(SWEEPABLE)}")
        vals = parse_int_list(values)
        if vals is None:
            raise InvalidOptionError(f"--sweep {spec!r}: values must be integers >= 1")
        out[key] = vals
    return out


def report_doc(path: Path, fmt: ModelFormat, backend: str, device: dict, runs: list[dict], warnings: list[str],
               options: dict, *, accuracy: float | None, partial: bool = False, inputs: list | None = None) -> dict:
    """The report document around measured runs: header, device, model entry. One frame for local runs,
    phone runs and the partial reports of interrupted remote runs, so all read alike."""
    model = {"path": str(path), "name": path.name, "label": path.name, "format": fmt.value, "backend": backend,
             "size_bytes": path_size(path), "accuracy": accuracy}
    if inputs is not None:
        model["inputs"] = inputs
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "edgelift_version": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "partial": partial, "device": device, "model": model, "options": options, "runs": runs,
            "warnings": warnings}


def accuracy_from_conversion(path: Path) -> float | None:
    """The artifact's accuracy from the ``conversion.json`` that ``edge convert`` wrote beside it, if any:
    comparisons then plot latency against accuracy without the user copying numbers around."""
    report = path.parent / "conversion.json"
    try:
        doc = json.loads(report.read_text())
        for a in doc.get("artifacts", []):
            if Path(a.get("path", "")).name == path.name:
                acc = (a.get("parity") or {}).get("accuracy")
                return float(acc) if acc is not None else None
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    return None


def backend_versions() -> dict[str, str]:
    out = {}
    for dist in ("onnxruntime", "ai-edge-litert", "tflite-runtime", "coremltools", "llama-cpp-python", "numpy"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def _feeds(model, opts: ProfileOptions, batch: int) -> dict[str, np.ndarray]:
    from ..core.tensors import random_input_set, read_npz, unbatched_inputs, validate_inputs

    # inputs without a batch axis (a recurrent state, a scalar) are fed whole
    unbatched = unbatched_inputs(model.inputs)
    batched = [s for s in model.inputs if s.name not in unbatched and s.shape]
    first = batched[0].shape[0] if batched else None
    if isinstance(first, int) and first != batch:
        if batch != 1:
            raise InvalidOptionError(f"{model.path.name} has a fixed batch of {first}; it cannot run batch {batch}")
        batch = first
    if opts.input is not None:
        arrays, _ = read_npz(opts.input)
        arrays, _ = validate_inputs(arrays, None, model.inputs, str(opts.input), unbatched)
        n = next(iter(arrays.values())).shape[0]
        idx = np.arange(batch) % n
        return {k: (v[0] if k in unbatched else v[idx]) for k, v in arrays.items()}
    arrays = random_input_set(model.inputs, batch, seed=opts.seed, unbatched=unbatched,
                              example_shapes=getattr(model.session, "built_shapes", None)).arrays
    return {k: (v[0] if k in unbatched else v) for k, v in arrays.items()}


class Interrupted:
    """Set when Ctrl-C stopped a measurement: what was measured so far is kept and reported as partial."""

    def __init__(self) -> None:
        self.hit = False


def _loops_per_sample(fn: Callable[[], object], warm_ns: list[int], min_sample_ns: int) -> int:
    """How many consecutive calls make one sample (1 unless a call is shorter than ``min_sample_ns``)."""
    if min_sample_ns <= 0:
        return 1
    typical = float(np.median(warm_ns)) if warm_ns else 0.0
    if not warm_ns:
        t0 = time.perf_counter_ns()
        fn()
        typical = time.perf_counter_ns() - t0
    return max(1, min(10_000, int(np.ceil(min_sample_ns / max(typical, 1.0))))) if typical < min_sample_ns else 1


def _time_runs(fn: Callable[[], object], opts: ProfileOptions, progress: Progress | None, stage: str,
               min_s: float = 0.0, loops: int = 1, interrupted: Interrupted | None = None):
    """(per-call samples_ns, start offsets in s): at least ``opts.runs`` calls and ``opts.min_time_s`` seconds,
    or as many as fit in the time budget ``opts.duration_s``; each sample is the mean of ``loops`` calls.
    ``min_s``: keep running at least this long (a power sampler needs several periods per window).
    Ctrl-C ends the loop with the samples taken so far (``interrupted.hit`` is set)."""
    samples, starts = [], []
    budget = opts.duration_s if opts.duration_s is not None else max(min_s, opts.min_time_s)
    total = -(-opts.runs // loops) if opts.duration_s is None and not budget else 0
    t_first = time.perf_counter_ns()
    deadline_ns = t_first + int(budget * 1e9)  # on the samples' own clock: the samples cover the budget
    try:
        while True:
            t0 = time.perf_counter_ns()
            for _ in range(loops):
                fn()
            t1 = time.perf_counter_ns()
            samples.append((t1 - t0) // loops)
            starts.append((t0 - t_first) / 1e9)
            if progress is not None:
                progress(stage, len(samples), total)
            enough = opts.duration_s is not None or len(samples) * loops >= opts.runs
            if enough and t1 >= deadline_ns:
                return samples, starts
    except KeyboardInterrupt:
        if interrupted is None or not samples:
            raise
        interrupted.hit = True
        return samples, starts


class _Power:
    """The idle baseline and the measured window of one setting, from one power source (or none)."""

    MIN_SAMPLES = 10  # a measured window shorter than this many sample periods is extended (runs continue)

    def __init__(self, source, rate_hz: float) -> None:
        self.source, self.rate_hz = source, rate_hz
        self.min_window_s = self.MIN_SAMPLES / rate_hz if source is not None else 0.0

    def measure(self, idle_s: float, work: Callable[[], Any]):
        """``work()`` inside the measured phase, after ``idle_s`` of idle baseline; (result, sampler)."""
        if self.source is None:
            return work(), None
        from .power import PowerSampler

        sampler = PowerSampler(self.source, rate_hz=self.rate_hz).start()
        try:
            with sampler.phase("idle"):
                time.sleep(idle_s)
            with sampler.phase("measured"):
                out = work()
        finally:
            sampler.stop()
        return out, sampler


def power_section(source, rate_hz: float, sampler, reason: str | None, units: float, tokens: float | None) -> dict:
    """The report's power entry from a sampler that ran an "idle" then a "measured" phase (or none:
    then ``reason`` says why). ``units``: runs in the measured phase; ``tokens``: tokens generated."""
    if sampler is None:
        return {"available": False, "reason": reason}
    from .power import summarize_power

    idle = sampler.phase_trace("idle")
    s = summarize_power(sampler.phase_trace("measured"), idle if len(idle) else None,
                        duration_s=sampler.phase_duration("measured"))
    if s.avg_w is None:
        return {"available": False, "reason": f"{source.name} gave no readings during the measured runs "
                                              f"({sampler.errors} read errors)"}
    full = sampler.trace()
    m = sampler.marks
    phase = ["idle" if t < m["measured.start"] else "measured" for t in full.t_s]
    t0 = m["idle.start"]
    per = lambda e: None if e is None else e / units  # noqa: E731
    per_tok = lambda e: None if e is None or not tokens else e / tokens  # noqa: E731
    return {"available": True, "source": source.name, "description": source.describe(),
            "rate_hz": rate_hz, "reason": None, "idle_w": s.idle_w, "avg_w": s.avg_w, "peak_w": s.peak_w,
            "energy_j": s.energy_j, "energy_above_idle_j": s.energy_above_idle_j,
            "energy_per_inference_j": per(s.energy_j), "energy_per_inference_above_idle_j": per(s.energy_above_idle_j),
            "energy_per_token_j": per_tok(s.energy_j), "energy_per_token_above_idle_j": per_tok(s.energy_above_idle_j),
            "n_samples": s.samples, "measured_s": s.duration_s,
            "timeline": {"t_s": [t - t0 for t in full.t_s], "w": list(full.watts), "phase": phase,
                         "rails": {k: _nan_to_none(v) for k, v in full.rails.items()},
                         "metrics": {k: _nan_to_none(v) for k, v in full.metrics.items()}},
            "metrics": _metric_summary(sampler.phase_trace("measured").metrics)}


def _nan_to_none(values: list[float]) -> list[float | None]:
    """JSON has no NaN: a rail or metric a sample did not print becomes null."""
    return [None if v != v else v for v in values]


def _metric_summary(metrics: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Mean and max of each source metric over the measured phase (tegrastats' GPU load, RAM ...)."""
    out = {}
    for name, values in metrics.items():
        vals = [v for v in values if v == v]
        if vals:
            out[name] = {"mean": sum(vals) / len(vals), "max": max(vals)}
    return out


def _llm_run(model, opts: ProfileOptions, progress: Progress | None) -> tuple[dict, list[int], list[float], int]:
    """llama-bench's pp/tg tests: (llm section, per-token decode samples, their offsets, tokens run)."""
    rng = np.random.default_rng(opts.seed)
    n_vocab = model.outputs[0].shape[-1]
    if opts.warmup:  # caches, lazy allocations and thread pools warmed before the first timed repetition
        tok = int(np.argmax(model.eval_tokens(rng.integers(0, n_vocab, min(opts.n_prompt, 16)).tolist(), reset=True)))
        for _ in range(min(opts.n_gen, 4)):
            tok = int(np.argmax(model.eval_tokens([tok])))
    pp_ns, tg_ns, ttft_ns, tok_ns, tok_t = [], [], [], [], []
    split = getattr(model.session, "devices", None)  # llama.cpp RPC servers holding the layers
    net_bytes = 0
    t_first = time.perf_counter_ns()
    for r in range(opts.repetitions):
        prompt = rng.integers(0, n_vocab, opts.n_prompt).tolist()
        t0 = time.perf_counter_ns()
        logits = model.eval_tokens(prompt, reset=True)
        tok = int(np.argmax(logits))
        t1 = time.perf_counter_ns()
        pp_ns.append(t1 - t0)
        net0 = network_bytes() if split else 0
        for _ in range(opts.n_gen):
            a = time.perf_counter_ns()
            tok = int(np.argmax(model.eval_tokens([tok])))
            b = time.perf_counter_ns()
            tok_ns.append(b - a)
            tok_t.append((a - t_first) / 1e9)
        tg_ns.append(time.perf_counter_ns() - t1)
        net_bytes += network_bytes() - net0 if split else 0
        ttft_ns.append(t1 - t0)  # the prompt's logits give the first token
        if progress is not None:
            progress("llm", r + 1, opts.repetitions)
    pp_avg, pp_std = rate_stats(pp_ns, opts.n_prompt)
    tg_avg, tg_std = rate_stats(tg_ns, opts.n_gen)
    llm = {"n_prompt": opts.n_prompt, "n_gen": opts.n_gen, "repetitions": opts.repetitions,
           "ttft_ms": float(np.mean(ttft_ns)) / 1e6, "pp_avg_ts": pp_avg, "pp_stddev_ts": pp_std,
           "tg_avg_ts": tg_avg, "tg_stddev_ts": tg_std, "tpot_ms": float(np.mean(tg_ns)) / opts.n_gen / 1e6,
           "pp_samples_ns": [int(x) for x in pp_ns], "tg_samples_ns": [int(x) for x in tg_ns]}
    if split:
        llm["rpc"] = {"devices": _rpc_devices(split, getattr(model.session, "device_buffers", {}) or {}, opts.remote),
                      "allocated_note": "bytes llama.cpp allocated on each server while loading (weights, KV cache, "
                                        "compute buffers), from its allocator's log; the server process adds its own "
                                        "runtime on top",
                      "server_note": "each server process's resident memory with the model loaded (VmRSS) and its "
                                     "peak since it started (VmHWM), read from /proc on the device: here for this "
                                     "machine's addresses, over the fleet's ssh:// url otherwise",
                      "tensor_split": list(model.session.tensor_split or []),
                      "network_bytes_per_token": net_bytes / (opts.repetitions * opts.n_gen),
                      "network_note": "bytes sent and received on this host's interfaces during decoding, per token "
                                      "(other traffic on the host counts too)"}
    return llm, tok_ns, tok_t, opts.repetitions * opts.n_gen


def _rpc_devices(split, held: dict[str, dict[str, int]], remote) -> list[dict]:
    """Each RPC device: what it was given, what llama.cpp allocated there, and what its server process holds
    (measured while the model is still loaded)."""
    from .targets.base import RemoteOptions
    from .targets.rpc_launch import measure_server

    out = []
    for d in split:
        server, why = measure_server(d.endpoint, getattr(d, "url", None), remote or RemoteOptions())
        out.append({"endpoint": d.endpoint, "memory_bytes": d.memory_bytes,
                    "allocated_bytes": sum(held[d.endpoint].values()) if d.endpoint in held else None,
                    "buffers": held.get(d.endpoint, {}),
                    "server_rss_bytes": server["rss_bytes"] if server else None,
                    "server_peak_rss_bytes": server["peak_rss_bytes"] if server else None,
                    **({"server_note": why} if why else {})})
    return out


def network_bytes() -> int:
    """Bytes sent plus received on every interface of this host so far (Linux /proc/net/dev; 0 elsewhere)."""
    try:
        lines = Path("/proc/net/dev").read_text().splitlines()[2:]
    except OSError:
        return 0
    total = 0
    for line in lines:
        fields = line.split(":", 1)[1].split()
        total += int(fields[0]) + int(fields[8])
    return total


def _op_profile(path: Path, fmt: ModelFormat, backend: str, feeds, opts: ProfileOptions, threads) -> tuple[dict | None, str | None]:
    if not opts.per_op:
        return None, "per-op profiling was turned off"
    if feeds is None:  # a language model: measured token by token (llama-bench's tests)
        return None, f"per-op time is not recorded for {fmt.value} language models"
    if fmt is ModelFormat.ONNX and backend == "onnxruntime":
        from ..runtimes.model import load
        from .perop import from_ort_trace, read_ort_trace

        with tempfile.TemporaryDirectory() as tmp:  # under a memory budget: the patched schedule's own ops
            with load(path, backend="onnxruntime", threads=threads, profile_prefix=str(Path(tmp) / "ort"),
                      **opts.load_options) as m:
                for _ in range(min(opts.runs, 50)):
                    m.run(feeds)
                trace = m.session.end_profiling()
            return from_ort_trace(read_ort_trace(trace), top=opts.top).to_dict(), None
    if fmt is ModelFormat.TFLITE:
        return _tflite_op_profile(path, opts, threads)
    return None, f"per-op time is not available for {fmt.value} models on {backend}"


def _tflite_op_profile(path: Path, opts: ProfileOptions, threads) -> tuple[dict | None, str | None]:
    """LiteRT's Python API has no op profiler; its ``benchmark_model`` tool has one. Run it when it is
    here (``--benchmark-model PATH`` or on PATH) and read its "Summary by node type" table."""
    import shutil
    import subprocess

    binary = opts.benchmark_model or shutil.which("benchmark_model")
    if binary is None:
        return None, ("LiteRT's Python API has no op profiler: put LiteRT's benchmark_model on PATH (or pass "
                      "--benchmark-model PATH) for the per-op table, as edge profile does on phones")
    from .targets.android_output import parse_op_profile

    cmd = [binary, f"--graph={path}", f"--num_runs={min(opts.runs, 50)}", "--warmup_runs=5", "--enable_op_profiling=true"]
    cmd += [f"--num_threads={threads}"] if threads else []
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"benchmark_model could not run ({e})"
    ops = parse_op_profile(done.stdout + done.stderr, top=opts.top) if done.returncode == 0 else None
    if ops is None:
        last = ((done.stderr or done.stdout).strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        return None, f"benchmark_model gave no op profile ({last})"
    ops.source = "benchmark_model"
    return ops.to_dict(), None


def _profile_setting(path: Path, fmt: ModelFormat, opts: ProfileOptions, params: dict, power: _Power,
                     power_reason: str | None, preprocess, postprocess, progress: Progress | None,
                     interrupted: Interrupted, is_llm: bool) -> dict:
    import dataclasses

    from ..runtimes.model import load

    threads, batch = params.get("threads", opts.threads), params.get("batch", opts.batch)
    opts = dataclasses.replace(opts, n_prompt=params.get("n_prompt", opts.n_prompt), n_gen=params.get("n_gen", opts.n_gen))
    load_options = dict(opts.load_options)
    if is_llm:
        load_options.setdefault("n_ctx", opts.n_prompt + opts.n_gen + 8)
        if fmt is ModelFormat.GGUF and opts.backend in ("auto", "llama.cpp"):
            load_options.setdefault("logits_all", False)
    rss0 = current_rss()
    with RssSampler() as load_rss:
        t0 = time.perf_counter_ns()
        model = load(path, backend=opts.backend, threads=threads, **load_options)
        load_ns = time.perf_counter_ns() - t0
    out: dict[str, Any] = {"label": setting_label(params),
                           "params": {"threads": threads, "batch": None if is_llm else batch},
                           "backend": model.backend, "load_ns": load_ns,
                           "inputs": [{"name": i.name, "shape": list(i.shape), "dtype": i.dtype} for i in model.inputs]}
    feeds, end_to_end = None, None
    with model:
        with RssSampler() as run_rss:
            if is_llm:
                t0 = time.perf_counter_ns()
                model.eval_tokens([0], reset=True)
                out["first_ns"] = time.perf_counter_ns() - t0
                (llm, samples, starts, tokens), sampler = power.measure(opts.idle_s, lambda: _llm_run(model, opts, progress))
                out["llm"], units = llm, opts.repetitions
                store = getattr(model.session, "store", None)  # the edge engine: what streaming weights cost
                if store is not None:
                    llm["weights"] = {"store": type(store).__name__, "budget_bytes": getattr(store, "budget", None),
                                      "bytes_read": store.stats.bytes_read, "io_wait_s": store.stats.wait_seconds,
                                      "peak_resident_bytes": store.stats.peak_resident_bytes}
            else:
                feeds = _feeds(model, opts, batch)
                batch = next(iter(feeds.values())).shape[0] if feeds else batch
                out["params"]["batch"] = batch
                t0 = time.perf_counter_ns()
                model.run(feeds)  # checks the feeds against the signature once...
                out["first_ns"] = time.perf_counter_ns() - t0
                run = model.session.run  # ...then the backend is timed alone, as benchmark_model times Invoke
                warm_ns = []
                for i in range(opts.warmup):
                    t0 = time.perf_counter_ns()
                    run(feeds)
                    warm_ns.append(time.perf_counter_ns() - t0)
                    if progress is not None:
                        progress("warmup", i + 1, opts.warmup)
                loops = _loops_per_sample(lambda: run(feeds), warm_ns[len(warm_ns) // 2:], opts.min_sample_ns)
                (samples, starts), sampler = power.measure(
                    opts.idle_s, lambda: _time_runs(lambda: run(feeds), opts, progress, "runs", power.min_window_s,
                                                    loops, interrupted))
                out["llm"], units, tokens = None, len(samples) * loops, None
                if (preprocess is not None or postprocess is not None) and not interrupted.hit:
                    pre = preprocess or (lambda f: f)
                    post = postprocess or (lambda o: o)
                    e2e, e2e_t = _time_runs(lambda: post(run(pre(feeds))), opts, progress, "end-to-end", 0.0, loops,
                                            interrupted)
                    end_to_end = LatencyStats.from_samples(e2e, batch=batch, t_offsets_s=e2e_t,
                                                           loops_per_sample=loops).to_dict()
        lat = LatencyStats.from_samples(samples, batch=1 if is_llm else batch, t_offsets_s=starts,
                                        loops_per_sample=1 if is_llm else loops)
        out["latency"] = lat.to_dict()
        out["latency_unit"] = "token" if is_llm else "inference"
        out["end_to_end"] = end_to_end
        out["memory"] = {"rss_before_load_bytes": rss0, "peak_rss_load_bytes": load_rss.peak,
                         "peak_rss_inference_bytes": run_rss.peak}
        if getattr(model, "memory_plan", None) is not None:  # load(..., memory_budget=...): planned and measured
            out["memory"]["budget"] = model.memory_plan.as_dict()
        out["power"] = power_section(power.source, power.rate_hz, sampler, power_reason, units, tokens)
        if interrupted.hit:
            out["ops"], out["ops_unavailable"] = None, "interrupted (Ctrl-C) before the per-op pass"
        else:
            out["ops"], out["ops_unavailable"] = _op_profile(path, fmt, model.backend, feeds, opts, threads)
            if out["ops"] is not None:
                reconcile_ops(out["ops"], lat.median_ns)
    return out


def reconcile_ops(ops: dict, median_ns: float) -> None:
    """Set the per-op table beside the measured latency. The per-op pass is a second, instrumented run
    (ONNX Runtime's profiler times every node and writes an event for it), so on small models its node
    times add up to more than an uninstrumented inference: the report says by how much, and gives each op
    type's share scaled to the measured median (``scaled_ms``), which is what the percentages mean."""
    total_ms = ops.get("total_ms") or 0.0
    measured_ms = median_ns / 1e6
    ops["measured_median_ms"] = measured_ms
    ops["sum_ms"] = total_ms
    ops["sum_over_measured"] = total_ms / measured_ms if measured_ms else None
    for o in ops["by_type"]:
        o["scaled_ms"] = measured_ms * o["percent"] / 100.0


def setting_label(params: dict[str, int]) -> str:
    """A run's name in every table: ``threads=2 batch=4``, or ``default`` without swept parameters."""
    return " ".join(f"{k}={v}" for k, v in params.items()) or "default"


def sweep_settings(sweep: dict[str, list[int]], fmt: ModelFormat, llm: bool | None = None) -> list[dict[str, int]]:
    """One dict per combination of the swept values (``[{}]`` without a sweep), after checking that each
    parameter can be swept for this model: a local run and a phone's run refuse alike."""
    unknown = set(sweep) - set(SWEEPABLE)
    if unknown:
        raise InvalidOptionError(f"cannot sweep {sorted(unknown)}; sweepable: {', '.join(SWEEPABLE)}")
    llm = fmt is ModelFormat.GGUF if llm is None else llm
    if llm and "batch" in sweep:
        raise InvalidOptionError("language models have no batch to sweep: use -p/-n for the prompt and generation")
    if not llm and ({"n_prompt", "n_gen"} & set(sweep)):
        raise InvalidOptionError("-p/-n lists are llama-bench's prompt and generation lengths: they apply to "
                                 "language models (GGUF, ONNX decoders) only")
    return [dict(zip(sweep, combo)) for combo in itertools.product(*sweep.values())] or [{}]


def profile(model: str | Path, options: ProfileOptions | None = None, *, sweep: dict[str, list[int]] | None = None,
            preprocess: Callable | None = None, postprocess: Callable | None = None,
            progress: Progress | None = None, power_env=None,
            on_run: Callable[[dict], None] | None = None) -> ProfileReport:
    """Profile ``model`` on this device; one run entry per combination of the ``sweep`` values.

    ``preprocess(feeds) -> feeds`` and ``postprocess(outputs) -> any`` are timed end to end with the
    model in a second loop (the model-only figures stay clean). ``power_env`` points the power
    sources and device identity at another root (tests replay device trees through it).
    ``on_run(run)`` gets each setting's entry as soon as it is measured (remote runs stream them, so a
    dropped connection still leaves the settings already done).
    """
    from .device import device_identity
    from .power import DeviceEnv, absence_hints, detect_power_source, POWER_SOURCES

    opts = options or ProfileOptions()
    opts.check()
    path = Path(model)
    fmt = detect_format(path)
    sweep = sweep or {}
    llm = is_language_model_file(path)
    settings = sweep_settings(sweep, fmt, llm)
    env = power_env or DeviceEnv()
    source, reason = None, None
    if opts.power == "none":
        reason = "power sampling was turned off (--power none)"
    else:
        source = detect_power_source(env, opts.power)
        if source is None:
            reason = f"no power source found on this device (looked for: {', '.join(POWER_SOURCES)})"
            reason += "".join(f"; {hint}" for hint in absence_hints(env))  # e.g. RAPL present but root-only
    power = _Power(source, opts.power_rate_hz)
    runs, warnings = [], []
    interrupted = Interrupted()
    try:
        for params in settings:
            try:
                runs.append(_profile_setting(path, fmt, opts, params, power, reason, preprocess, postprocess,
                                             progress, interrupted, llm))
            except KeyboardInterrupt:
                if not runs:
                    raise
                interrupted.hit = True
            if interrupted.hit:
                break
            if on_run is not None:
                on_run({k: v for k, v in runs[-1].items() if k != "inputs"})
    finally:
        if source is not None:
            source.close()
    inputs = [r.pop("inputs") for r in runs][0]
    device = device_identity(env).to_dict()
    device["backends"] = backend_versions()
    for r in runs:
        lat = r["latency"]
        if lat["unreliable"]:
            warnings.append(f"{r['label']}: latency spread is high (cv {lat['cv']:.0%} > 10%): the mean is unreliable; "
                            "close other programs, fix the CPU governor to 'performance', or run longer")
    cores = os.cpu_count() or 1
    asked = max([*(sweep.get("threads") or []), opts.threads or 0])
    if asked > cores:
        warnings.append(f"{asked} threads asked on a device with {cores} cores: settings above {cores} threads "
                        "oversubscribe the CPU, so their figures measure contention, not the model")
    if interrupted.hit:
        warnings.append(f"interrupted (Ctrl-C): {len(runs)} of {len(settings)} setting(s) measured, the last one "
                        "only up to the interruption")
    for r in runs:
        ops = r.get("ops") or {}
        ratio = ops.get("sum_over_measured")
        if ratio is not None and not 0.8 <= ratio <= 1.25:
            warnings.append(f"{r['label']}: per-op times add up to {ratio:.2f}x the measured median "
                            f"({ops['sum_ms']:.3f} ms against {ops['measured_median_ms']:.3f} ms): they come from a "
                            "separate profiled pass whose per-node instrumentation costs time; read the percentages "
                            "(scaled ms = share of the measured median)")
    if reason is not None:
        warnings.append(f"power: {reason}")
    gov = device.get("cpu_governor")
    if gov and gov != "performance":
        warnings.append(f"the CPU governor is '{gov}': frequency scaling can add latency spread")
    throttling = device.get("throttling") or {}
    if isinstance(throttling, dict) and throttling.get("flags"):
        warnings.append(f"the device reports throttling: {', '.join(throttling['flags'])}")
    options = {"runs": opts.runs, "warmup": opts.warmup, "duration_s": opts.duration_s, "min_time_s": opts.min_time_s,
               "power": opts.power,
               "power_rate_hz": opts.power_rate_hz, "idle_s": opts.idle_s,
               "n_prompt": opts.n_prompt if llm else None, "n_gen": opts.n_gen if llm else None, "sweep": sweep}
    accuracy = opts.accuracy if opts.accuracy is not None else accuracy_from_conversion(path)
    doc = report_doc(path, fmt, runs[0]["backend"], device, runs, warnings, options, accuracy=accuracy, inputs=inputs,
                     partial=interrupted.hit)
    return ProfileReport(doc)

