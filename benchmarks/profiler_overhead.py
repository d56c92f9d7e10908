"""Does measuring change what is measured, and can the figure be trusted? ``edge profile`` with its default
options (power sampled at 10 Hz, RSS sampled, the minimum-time rule: at least 100 calls and 2 s, calls under
20 ms timed in groups) against a bare timing loop over the same ONNX Runtime session, side by side; and the
coefficient of variation of the default profile against the same profile timed call by call (the rule off:
``min_time_s=0, min_sample_ns=0``, 300 runs — what `edge profile` did before, cv 31-60% on the digits CNN),
and against a bare ONNX Runtime loop timed the same way (20 ms groups for 2 s): the spread the machine itself
has, which no measurement method removes.

Models: MobileNetV2-224 (fp32, ~ms per run) and the digits CNN (int8, tens of µs: the worst case for any
per-run overhead). Each round times a bare ``InferenceSession.run`` loop (grouped as the profile groups
calls: the same estimator), ``edge profile`` on the same file, and the bare loop again; the round's ratio is
the profile's median latency over the mean of the two bare medians around it (machine noise here drifts by
~10-40% over seconds), and the figure is the median of the rounds' ratios. This host has no power sensor, so the power source is RAPL
replayed from a temp powercap tree (device-power.md's format, a counter advanced by a writer thread):
the sampler thread wakes, reads and parses sysfs files at 10 Hz exactly as on a device.

    python benchmarks/profiler_overhead.py
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from _common import result

ROUNDS, RUNS = 7, 200


def replayed_rapl(root: Path, watts: float = 15.0):
    dom = root / "sys/class/powercap/intel-rapl:0"
    dom.mkdir(parents=True)
    (dom / "name").write_text("package-0\n")
    (dom / "max_energy_range_uj").write_text("262143328850\n")
    (dom / "energy_uj").write_text("0\n")
    stop = threading.Event()

    def writer():
        t0 = time.monotonic()
        while not stop.wait(0.02):
            tmp = dom / "energy_uj.tmp"
            tmp.write_text(f"{int(watts * 1e6 * (time.monotonic() - t0))}\n")
            tmp.replace(dom / "energy_uj")

    threading.Thread(target=writer, daemon=True).start()
    return stop


def bare_session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def bare_median_ns(sess, feeds: dict, runs: int) -> tuple[float, float]:
    for _ in range(10):
        sess.run(None, feeds)
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        sess.run(None, feeds)
        samples.append(time.perf_counter_ns() - t0)
    return float(np.median(samples)), float(np.mean(samples))


def bare_grouped(sess, feeds: dict, loops: int, seconds: float = 2.0) -> tuple[float, float, float]:
    """(median, mean, cv) of a bare loop timed as the default profile times it (groups of ``loops`` calls for
    ``seconds``, per-call figures): the same estimator with no profiler in the process."""
    samples = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter_ns()
        for _ in range(loops):
            sess.run(None, feeds)
        samples.append((time.perf_counter_ns() - t0) / loops)
    a = np.asarray(samples)
    return float(np.median(a)), float(a.mean()), float(a.std(ddof=1) / a.mean()) if a.size > 1 else 0.0


def models(tmp: Path) -> dict[str, Path]:
    import torch

    import edgelift
    from examples.digits.train import train
    from examples.models.mobilenet_v2 import build_model

    torch.manual_seed(0)
    mnv2 = edgelift.convert(build_model().eval(), example_inputs=(torch.randn(1, 3, 224, 224),), quantize=["none"],
                            calibration="random", out=tmp / "mnv2", name="mobilenet_v2")
    train(tmp / "digits")
    digits = edgelift.convert(tmp / "digits" / "digits.pt2", quantize=["int8"], calibration=tmp / "digits" / "calib.npz",
                              out=tmp / "digits-onnx", name="digits")
    return {"mobilenet_v2_fp32": Path(mnv2.artifact("none").path), "digits_int8": Path(digits.artifact("int8").path)}


def main() -> None:
    import edgelift
    from edgelift.core.tensors import random_input_set
    from edgelift.profilers.power import DeviceEnv
    from edgelift.profilers.profile import MIN_SAMPLE_NS, ProfileOptions, profile

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        stop = replayed_rapl(tmp / "device")
        try:
            for name, path in models(tmp).items():
                with edgelift.load(path) as m:
                    feeds = random_input_set(m.inputs, 1, seed=0).arrays
                sess = bare_session(path)
                bare_med, bare_mean, prof_med, prof_mean, samples, ratios, mean_ratios = [], [], [], [], [], [], []
                cvs, cvs_call, cvs_bare, loops, call_ratios = [], [], [], [], []
                for _ in range(ROUNDS):
                    call_med, _ = bare_median_ns(sess, feeds, RUNS)
                    n = max(1, int(np.ceil(MIN_SAMPLE_NS / call_med))) if call_med < MIN_SAMPLE_NS else 1
                    med0, mean0, cv0 = bare_grouped(sess, feeds, n)
                    rep = profile(path, ProfileOptions(idle_s=0.5, power="rapl", power_rate_hz=10, per_op=False),
                                  power_env=DeviceEnv(root=tmp / "device"))
                    lat, p = rep.runs[0]["latency"], rep.runs[0]["power"]
                    assert p["available"], p
                    med1, mean1, cv1 = bare_grouped(sess, feeds, n)
                    call = profile(path, ProfileOptions(runs=300, warmup=10, idle_s=0.0, power="none", per_op=False,
                                                        min_time_s=0.0, min_sample_ns=0)).runs[0]["latency"]
                    cvs.append(lat["cv"])
                    cvs_bare.append((cv0 + cv1) / 2)
                    cvs_call.append(call["cv"])
                    loops.append(lat["loops_per_sample"])
                    bare_med.append((med0 + med1) / 2)
                    bare_mean.append((mean0 + mean1) / 2)
                    prof_med.append(lat["median_ns"])
                    prof_mean.append(lat["avg_ns"])
                    ratios.append(prof_med[-1] / bare_med[-1])
                    mean_ratios.append(prof_mean[-1] / bare_mean[-1])
                    call_ratios.append(prof_med[-1] / call_med)
                    samples.append(p["n_samples"])
                k = int(np.argsort(ratios)[len(ratios) // 2])  # the median round: its own figures, its own ratio
                result(f"profiler_overhead.{name}.median_latency", prof_med[k] / 1e6, "ms", bare_med[k] / 1e6)
                k = int(np.argsort(mean_ratios)[len(mean_ratios) // 2])
                result(f"profiler_overhead.{name}.mean_latency", prof_mean[k] / 1e6, "ms", bare_mean[k] / 1e6)
                result(f"profiler_overhead.{name}.cv_default", float(np.median(cvs)), "ratio",
                       float(np.median(cvs_call)))
                result(f"profiler_overhead.{name}.cv_default_vs_bare", float(np.median(cvs)), "ratio",
                       float(np.median(cvs_bare)))
                print(f"# {name}: per-round ratios (median latency) {' '.join(f'{r:.3f}' for r in ratios)}; against "
                      f"the median of single bare calls {' '.join(f'{r:.3f}' for r in call_ratios)}")
                print(f"# {name}: per-round cv, default {' '.join(f'{c:.3f}' for c in cvs)}; call by call "
                      f"{' '.join(f'{c:.3f}' for c in cvs_call)}; bare loop timed alike "
                      f"{' '.join(f'{c:.3f}' for c in cvs_bare)}; calls per sample {min(loops)}-{max(loops)}")
                print(f"# {name}: {ROUNDS} rounds; power samples per measured window "
                      f"{min(samples)}-{max(samples)} at 10 Hz")
        finally:
            stop.set()


if __name__ == "__main__":
    main()
