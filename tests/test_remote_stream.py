"""The transport-independent parts of remote profiling, without a device: target URLs, the result stream
(a line cut by a dropped connection), and the device-side runner stopping when the workstation goes silent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgelift.errors import InvalidOptionError
from edgelift.profilers.targets.base import parse_target
from edgelift.profilers.targets.stream import run_streaming


def test_bad_device_urls():
    for bad in ("ftp://x", "ssh://", "pi.local", "ssh://-oProxyCommand=x", "ssh://-x@host", "ssh://user@-host"):
        with pytest.raises(InvalidOptionError):
            parse_target(bad)
    t = parse_target("ssh://pi@raspberrypi.local:2222")
    assert (t.user, t.host, t.port) == ("pi", "raspberrypi.local", 2222)


def _real_run(model: Path) -> dict:
    """A run as a device streams it (the local profiler's own)."""
    import edgelift

    report = edgelift.profile(model, edgelift.ProfileOptions(runs=5, warmup=1, idle_s=0, power="none", per_op=False, min_time_s=0.0))
    return json.loads(json.dumps(report.runs[0]))


def test_a_line_cut_by_a_dropped_connection_keeps_the_runs_before_it(digits_result):
    model = Path(digits_result.artifact("int8").path)
    run = _real_run(model)
    script = (f"import sys; print('@@edge-run ' + {json.dumps(json.dumps(run))}, flush=True); "
              "print('@@edge-report {\"schema\": \"edge-sd', flush=True); sys.exit(255)")
    lines = []
    doc = run_streaming([sys.executable, "-c", script], "ssh://pi", model, {"hostname": "pi"}, lines.append)
    assert doc["partial"] is True and doc["runs"] == [run] and doc["device"]["url"] == "ssh://pi"
    assert "ended early" in doc["warnings"][0] and lines[0] == f"measured {run['label']}"


def test_a_malformed_run_from_a_device_is_one_typed_error(digits_result):
    """A device is not trusted: a run missing its latency (the local CLI used to die on KeyError) is refused
    with the field named."""
    from edgelift.profilers.targets.base import RemoteRunError

    model = Path(digits_result.artifact("int8").path)
    run = _real_run(model)
    del run["latency"]
    script = f"print('@@edge-run ' + {json.dumps(json.dumps(run))}, flush=True)"
    with pytest.raises(RemoteRunError, match="lacks the required field 'latency'"):
        run_streaming([sys.executable, "-c", script], "ssh://pi", model, {"hostname": "pi"}, None)


def test_runner_stops_the_run_when_the_heartbeat_stops(digits_result):
    """A network that drops without closing the session leaves the device's stdin open but silent: the
    runner must stop the measurement by itself (here after 1.5 s of silence instead of 15 s)."""
    model = Path(digits_result.artifact("int8").path)
    env = {**os.environ, "EDGE_RUNNER_SILENCE_S": "1.5"}
    proc = subprocess.Popen([sys.executable, "-m", "edgelift.profilers.targets.runner", str(model), "--duration", "60",
                             "--idle", "0", "--power", "none", "--no-per-op", "--stream-results"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    t0 = time.time()
    try:
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdin.close()
    assert code != 0 and time.time() - t0 < 20  # stopped long before its 60 s budget
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert not [ln for ln in out.splitlines() if "--duration 60" in ln and "edgelift.cli" in ln]
