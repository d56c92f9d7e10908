"""Run a command inside a memory cgroup: a hard limit on its memory *including page cache*.

``ulimit -v`` or RLIMIT_AS limit address space, which an mmap-ed model file inflates without using
memory; RSS caps ignore the page cache that holds the file. A memory cgroup is what a small board
actually imposes: every page the process touches, anonymous or file-backed, counts, and when the
limit is reached the kernel evicts file pages (which must then be read again) before it kills. So
"llama.cpp with mmap in 512 MB" and "the edge engine streaming under a budget in 512 MB" are compared
under the same rule.

cgroup v2 (``memory.max``, ``memory.peak``, ``memory.events``) and v1 (``memory.limit_in_bytes``,
``memory.max_usage_in_bytes``, ``memory.oom_control``) are both handled. A child group is created
under the caller's own group, the command is moved into it before it execs (so its whole life is
charged), and the group is removed afterwards. :func:`unavailable` says why when groups cannot be
created here (no controller, read-only ``/sys/fs/cgroup``, not root).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidOptionError

CGROUP_ROOT = Path("/sys/fs/cgroup")
_counter = itertools.count()


@dataclass
class LimitedRun:
    """What a command did under its limit: exit code, output, the group's peak usage (page cache
    included), whether the kernel's OOM killer fired, and wall time."""

    returncode: int
    stdout: str
    stderr: str
    peak_bytes: int | None
    oom_killed: bool
    wall_s: float


class _Group:
    """One cgroup (v1 memory controller or v2) we created and will remove."""

    def __init__(self, path: Path, v2: bool) -> None:
        self.path, self.v2 = path, v2

    def set_limit(self, limit_bytes: int) -> None:
        if self.v2:
            (self.path / "memory.max").write_text(str(limit_bytes))
            if (self.path / "memory.swap.max").exists():
                (self.path / "memory.swap.max").write_text("0")  # no escape into swap
            return
        (self.path / "memory.limit_in_bytes").write_text(str(limit_bytes))
        memsw = self.path / "memory.memsw.limit_in_bytes"
        if memsw.exists():
            try:
                memsw.write_text(str(limit_bytes))
            except OSError:
                pass  # swap accounting off: there is nothing to escape into then either

    def procs_file(self) -> Path:
        return self.path / "cgroup.procs"

    def peak_bytes(self) -> int | None:
        name = "memory.peak" if self.v2 else "memory.max_usage_in_bytes"
        try:
            return int((self.path / name).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def oom_kills(self) -> int:
        name = "memory.events" if self.v2 else "memory.oom_control"
        try:
            fields = dict(line.split() for line in (self.path / name).read_text().splitlines() if line.strip())
        except (OSError, ValueError):
            return 0
        return int(fields.get("oom_kill", 0))

    def remove(self) -> None:
        for _ in range(50):  # the exiting process may linger a moment in the group
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.02)


def _own_group(v2: bool) -> Path | None:
    """The directory of this process's own memory cgroup."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        hier, controllers, rel = line.split(":", 2)
        if v2 and hier == "0" and controllers == "":
            return CGROUP_ROOT / rel.lstrip("/")
        if not v2 and "memory" in controllers.split(","):
            return CGROUP_ROOT / "memory" / rel.lstrip("/")
    return None


def _new_group() -> _Group:
    """Create a child group under ours: v1's memory hierarchy first (it allows a child beside our own
    process), else v2 where the parent delegates the memory controller. OSError says why not."""
    name = f"edgelift-{os.getpid()}-{next(_counter)}"
    errors = []
    v1 = _own_group(v2=False)
    if v1 is not None and (v1 / "memory.limit_in_bytes").exists():
        try:
            (v1 / name).mkdir()
            return _Group(v1 / name, v2=False)
        except OSError as e:
            errors.append(f"v1 {v1}: {e.strerror or e}")
    v2 = _own_group(v2=True)
    if v2 is not None and (CGROUP_ROOT / "cgroup.controllers").exists():
        try:
            if "memory" not in (v2 / "cgroup.subtree_control").read_text().split():
                raise OSError(f"the memory controller is not delegated to {v2} (cgroup.subtree_control)")
            (v2 / name).mkdir()
            return _Group(v2 / name, v2=True)
        except OSError as e:
            errors.append(f"v2 {v2}: {e.strerror or e}")
    raise OSError("; ".join(errors) or "no memory cgroup controller is mounted under /sys/fs/cgroup")


def _die_with_parent() -> None:
    """Linux: the child is killed if we die first (a benchmark stopped mid-run leaves no process behind
    holding a core and its cgroup)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def unavailable() -> str | None:
    """None when memory cgroups can be created here, else why not (one line, for skip messages)."""
    try:
        group = _new_group()
    except OSError as e:
        return f"memory cgroups are not writable here ({e})"
    group.remove()
    return None


def run_limited(cmd: list[str], limit_bytes: int, *, minimum_bytes: int | None = None, what: str = "the command",
                timeout_s: float | None = None, env: dict[str, str] | None = None,
                cwd: str | Path | None = None) -> LimitedRun:
    """Run ``cmd`` in a new memory cgroup limited to ``limit_bytes`` (page cache counted).

    A limit below ``minimum_bytes`` (what ``what`` cannot run in) is refused before anything starts,
    naming the minimum: a run that would only thrash or be killed measures nothing."""
    if minimum_bytes is not None and limit_bytes < minimum_bytes:
        raise InvalidOptionError(f"memory limit {limit_bytes / 2**20:.1f} MiB is below the minimum "
                                 f"{minimum_bytes / 2**20:.1f} MiB that {what} needs; raise the limit")
    if limit_bytes <= 0:
        raise InvalidOptionError(f"memory limit must be positive, got {limit_bytes}")
    group = _new_group()
    try:
        group.set_limit(int(limit_bytes))
        procs = str(group.procs_file())

        def enter() -> None:  # in the child, before exec: all of its memory is charged to the group
            with open(procs, "w") as f:
                f.write(str(os.getpid()))
            _die_with_parent()

        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=enter, timeout=timeout_s, env=env,
                              cwd=cwd)
        wall = time.perf_counter() - t0
        return LimitedRun(done.returncode, done.stdout, done.stderr, group.peak_bytes(), group.oom_kills() > 0, wall)
    finally:
        group.remove()


class LimitedProcess:
    """A long-running command (a server) inside its own memory cgroup, until :meth:`stop`.

    ``peak_bytes()`` and ``oom_killed()`` read the group while it runs; leaving the ``with`` block kills the
    process and removes the group."""

    def __init__(self, cmd: list[str], limit_bytes: int, *, env: dict[str, str] | None = None) -> None:
        if limit_bytes <= 0:
            raise InvalidOptionError(f"memory limit must be positive, got {limit_bytes}")
        self.group = _new_group()
        try:
            self.group.set_limit(int(limit_bytes))
            procs = str(self.group.procs_file())

            def enter() -> None:
                with open(procs, "w") as f:
                    f.write(str(os.getpid()))
                _die_with_parent()

            self.process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                            preexec_fn=enter, env=env)
        except BaseException:
            self.group.remove()
            raise

    def peak_bytes(self) -> int | None:
        return self.group.peak_bytes()

    def oom_killed(self) -> bool:
        return self.group.oom_kills() > 0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.group.remove()

    def __enter__(self) -> "LimitedProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def limit_self(limit_bytes: int) -> None:
    """Move this process into a new memory cgroup of ``limit_bytes`` (a server capping itself on a device);
    OSError says why not. The group outlives the process only as an empty directory the kernel reclaims."""
    if limit_bytes <= 0:
        raise InvalidOptionError(f"memory limit must be positive, got {limit_bytes}")
    group = _new_group()
    group.set_limit(int(limit_bytes))
    with open(group.procs_file(), "w") as f:
        f.write(str(os.getpid()))
