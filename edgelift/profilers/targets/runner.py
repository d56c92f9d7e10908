"""The device side of a remote profile: ``python -m edgelift.profilers.targets.runner ARGS``.

It runs ``edge profile ARGS`` in its own process group and relays its output. When the connection
goes — its stdin reaches EOF (the workstation pressed Ctrl-C, or the SSH session closed) or the
workstation's once-a-second heartbeat stops (a network that dropped without closing anything) — or it
is told to stop (SIGTERM/SIGHUP), it stops the whole group, so no measurement keeps running on the device.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading

GRACE_S = 3.0
# the workstation writes a heartbeat every second; this long without one: it is gone
SILENCE_S = float(os.environ.get("EDGE_RUNNER_SILENCE_S", "15"))


def _stop(child: subprocess.Popen) -> None:
    if child.poll() is not None:
        return
    try:
        os.killpg(child.pid, signal.SIGTERM)
        child.wait(GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def main(args: list[str]) -> int:
    child = subprocess.Popen([sys.executable, "-m", "edgelift.cli", "profile", *args], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, text=True)

    def watch_stdin() -> None:
        fd = sys.stdin.fileno()
        while True:  # EOF (Ctrl-C, closed session) or silence (a network that dropped without closing)
            ready, _, _ = select.select([fd], [], [], SILENCE_S)
            if not ready or not os.read(fd, 1 << 12):
                break
        _stop(child)

    threading.Thread(target=watch_stdin, daemon=True).start()
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, lambda *_: (_stop(child), os._exit(130)))
    try:
        for line in child.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
    except (BrokenPipeError, OSError):
        _stop(child)
        return 130
    return child.wait()


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    os._exit(code)  # not sys.exit: the stdin watcher blocks in read(), and interpreter shutdown would abort on it
