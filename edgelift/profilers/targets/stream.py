"""Reading a device's ``edge profile --stream-results`` output: runs as they finish, the report at the end.

A connection that drops (or Ctrl-C) after some runs still gives a report: the runs received, marked
``partial`` with the reason. The device-side runner stops the measurement when our end goes away.
"""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

from ...core.json_schema import SchemaViolation, loads, validate
from .base import DeviceUnreachableError, OnLine, RemoteRunError, terminate

RUN, REPORT = "@@edge-run ", "@@edge-report "
HEARTBEAT_S = 1.0  # a byte on the device's stdin this often: the runner stops the run when they cease


def partial_report(url: str, model: Path, identity: dict, runs: list[dict], why: str) -> dict:
    """The report of an interrupted run: what was measured, marked partial, with the reason."""
    from ...core.formats import detect_format
    from ..profile import report_doc

    return report_doc(model, detect_format(model), runs[0]["backend"] if runs else "n/a", {**identity, "url": url},
                      runs, [f"partial results: {why}"], {}, accuracy=None, partial=True)


def _parse(line: str, prefix: str) -> dict | None:
    """A result line, or None when the connection cut it short (then it is just output)."""
    try:
        value = loads(line[len(prefix):])
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def checked(doc: dict, url: str, what: str, schema_part: str | None = None) -> dict:
    """A run or report the device sent, validated before anything reads it (a device is not trusted)."""
    from ..report import profile_schema

    schema = profile_schema()
    try:
        validate(doc, schema["$defs"][schema_part] if schema_part else schema, schema)
    except SchemaViolation as e:
        raise RemoteRunError(f"{url} sent a malformed {what} ({e}); is the device's edgelift the same version?") from e
    return doc


def _heartbeat(proc: subprocess.Popen, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        try:
            proc.stdin.write("\n")
            proc.stdin.flush()
        except (OSError, ValueError):
            return


def run_streaming(cmd: list[str], url: str, model: Path, identity: dict, on_line: OnLine | None) -> dict:
    """Run ``cmd`` (ssh ... runner, or the runner itself), relay its lines, and assemble the report."""
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stderr: list[str] = []
    drain = threading.Thread(target=lambda: stderr.extend(proc.stderr), daemon=True)  # a full pipe would block ssh
    drain.start()
    stop = threading.Event()
    threading.Thread(target=_heartbeat, args=(proc, stop), daemon=True).start()
    runs: list[dict] = []
    report, tail = None, []
    try:
        for line in proc.stdout:
            if line.startswith(RUN) and (run := _parse(line, RUN)) is not None:
                runs.append(checked(run, url, "run", "run"))
                if on_line is not None:
                    on_line(f"measured {run.get('label')}")
            elif line.startswith(REPORT) and (doc := _parse(line, REPORT)) is not None:
                report = doc
            else:
                tail = (tail + [line.rstrip()[:300]])[-20:]
                if on_line is not None and line.strip() and not line.startswith("@@"):
                    on_line(line.rstrip())
        code = proc.wait()
    except KeyboardInterrupt:
        stop.set()
        _close(proc)
        if not runs:
            raise
        return partial_report(url, model, identity, runs, "interrupted (Ctrl-C); the device run was stopped")
    finally:
        stop.set()
        _close(proc)
    drain.join(5)
    if report is not None and code == 0:
        checked(report, url, "report")
        report["device"] = {**report["device"], **{k: v for k, v in identity.items() if k not in report["device"]},
                            "url": url}
        return report
    err = [ln.rstrip() for ln in stderr]
    why = next((ln for ln in reversed(err + tail) if ln.strip()), f"exit code {code}")
    if runs:
        return partial_report(url, model, identity, runs, f"the run on {url} ended early ({why})")
    if code == 255:  # ssh's own failure: the connection, not the measurement
        raise DeviceUnreachableError(f"{url}: connection lost or refused ({why})")
    raise RemoteRunError(f"edge profile failed on {url}: {why}")


def _close(proc: subprocess.Popen) -> None:
    """End our side: closing stdin tells the device's runner to stop; then the local process goes."""
    try:
        if proc.stdin and not proc.stdin.closed:
            proc.stdin.close()
    except OSError:
        pass
    terminate(proc)
