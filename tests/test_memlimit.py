"""The memory-cgroup harness the flash-offloading benchmark runs both engines in (edgelift.core.memlimit).

Each test runs a real child process in a real cgroup; where cgroups cannot be created (no controller,
read-only /sys/fs/cgroup, not root) they skip with the reason the harness gives.
"""

from __future__ import annotations

import sys

import pytest

from edgelift.core import memlimit
from edgelift.errors import InvalidOptionError

MiB = 2**20
ALLOC = "import sys; b = bytearray(int(sys.argv[1]) * 2**20); b[::4096] = b'x' * len(b[::4096]); print(len(b))"


@pytest.fixture(scope="module")
def cgroups():
    why = memlimit.unavailable()
    if why:
        pytest.skip(why)


def test_a_limit_below_the_minimum_is_refused_before_starting(tmp_path):
    """No cgroup needed: the refusal comes first, names the minimum, and nothing runs."""
    marker = tmp_path / "ran"
    with pytest.raises(InvalidOptionError, match=r"below the minimum 300\.0 MiB that llama\.cpp on m\.gguf needs"):
        memlimit.run_limited([sys.executable, "-c", f"open({str(marker)!r}, 'w')"], 200 * MiB, minimum_bytes=300 * MiB,
                             what="llama.cpp on m.gguf")
    assert not marker.exists()


def test_within_the_limit_the_peak_counts_what_the_child_touched(cgroups):
    run = memlimit.run_limited([sys.executable, "-c", ALLOC, "64"], 256 * MiB)
    assert run.returncode == 0 and run.stdout.strip() == str(64 * MiB) and not run.oom_killed
    assert 64 * MiB <= run.peak_bytes < 256 * MiB  # the 64 MiB buffer plus the interpreter, under the limit


def test_over_the_limit_the_kernel_kills_and_we_say_so(cgroups):
    run = memlimit.run_limited([sys.executable, "-c", ALLOC, "200"], 96 * MiB)
    assert run.returncode != 0 and run.oom_killed
    assert run.peak_bytes <= 96 * MiB + MiB  # never above the limit (page granularity)


def test_page_cache_is_charged_to_the_group(cgroups, tmp_path):
    """Reading a 120 MiB file through the page cache in a 64 MiB group succeeds (file pages are
    evicted, not fatal) while the group's usage never passes the limit: the rule a mmap-ed model lives by."""
    big = tmp_path / "big.bin"
    big.write_bytes(b"\1" * (120 * MiB))
    import os

    fd = os.open(big, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # not cached already (outside the group)
    os.close(fd)
    read = f"import sys; f = open({str(big)!r}, 'rb'); n = 0\nwhile (c := f.read(1 << 20)): n += len(c)\nprint(n)"
    run = memlimit.run_limited([sys.executable, "-c", read], 64 * MiB)
    assert run.returncode == 0 and int(run.stdout) == 120 * MiB and not run.oom_killed
    assert 20 * MiB < run.peak_bytes <= 64 * MiB + MiB
