"""--out is all-or-nothing: a conversion killed (SIGKILL) at any moment leaves the previous set or the complete
new one, the next run cleans up after it, and a full disk is one clear error with nothing written."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgelift.core.atomic import CRASH_ENV, STAGING_TAG, StagingDir

REPO = Path(__file__).resolve().parent.parent


def snapshot(d: Path) -> dict[str, str]:
    """Every file under ``d`` (hidden ones too) with its content hash."""
    if not d.exists():
        return {}
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*"))
            if p.is_file()}


def staging_leftovers(out: Path) -> list[str]:
    places = [out.parent, out] if out.exists() else [out.parent]
    return [p.name for d in places for p in d.iterdir() if STAGING_TAG in p.name]


def edge(*args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edgelift.cli", *map(str, args)], cwd=kw.get("cwd", REPO),
                            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_edge(*args: str, env: dict | None = None, cwd: Path | None = None) -> tuple[int, str]:
    p = edge(*args, env=env, cwd=cwd or REPO)
    out, err = p.communicate(timeout=600)
    return p.returncode, out + err


def state_of(out: Path, old: dict[str, str]) -> str:
    """'old' when --out is byte for byte what it was, 'new' when it holds a complete new conversion (every
    artifact conversion.json lists, at the size it records); anything else fails the test."""
    now = snapshot(out)
    assert not any(STAGING_TAG in k for k in now), f"staging files inside --out: {sorted(now)}"
    if now == old:
        return "old"
    assert now.get("notes.txt") == old.get("notes.txt"), "the user's own file in --out was lost or changed"
    report = json.loads((out / "conversion.json").read_text())
    for a in report["artifacts"]:
        p = out / Path(a["path"]).name
        size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size
        assert size == a["size_bytes"], f"{p.name} is {size} bytes, conversion.json says {a['size_bytes']}"
    assert now["conversion.json"] != old.get("conversion.json"), "artifacts changed but conversion.json is the old one"
    return "new"


@pytest.fixture(scope="module")
def sources(tmp_path_factory, digits_onnx) -> dict[str, Path]:
    from tests.fuzzing.seeds import tiny_llama_gguf

    d = tmp_path_factory.mktemp("sources")
    shutil.copyfile(digits_onnx, d / "digits.onnx")
    tiny_llama_gguf(d / "tiny.gguf")
    return {"onnx": d / "digits.onnx", "gguf": d / "tiny.gguf"}


def conversions(sources: dict[str, Path]) -> dict[str, tuple[list[str], list[str]]]:
    """name -> (arguments of the old conversion already in --out, arguments of the new one that gets killed)."""
    onnx, gguf = str(sources["onnx"]), str(sources["gguf"])
    return {
        "onnx-3-modes": (["convert", onnx, "-q", "none"],
                         ["convert", onnx, "-q", "none", "-q", "fp16", "-q", "int8-dynamic"]),
        "tflite": (["convert", onnx, "--to", "tflite", "-q", "none"],
                   ["convert", onnx, "--to", "tflite", "-q", "none", "-q", "fp16"]),
        "gguf": (["convert", gguf, "--to", "gguf", "-q", "F16"], ["convert", gguf, "--to", "gguf", "-q", "Q8_0", "-q", "F16"]),
    }


def prepared_out(tmp: Path, old_args: list[str]) -> tuple[Path, dict[str, str]]:
    """--out holding a complete earlier conversion and a file of the user's own."""
    out = tmp / "out"
    code, text = run_edge(*old_args, "--out", out)
    assert code == 0, text
    (out / "notes.txt").write_text("the user's own notes")
    return out, snapshot(out)


CRASH_POINTS = ["publish:staged", "publish:before-exchange", "publish:after-exchange"]


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_kill_at_each_publishing_step(sources, tmp_path, point):
    """SIGKILL at each step of publishing into an existing --out: before the swap the old set stays, after it
    the new set is complete; the next run removes what the killed one left beside --out."""
    old_args, new_args = conversions(sources)["onnx-3-modes"]
    out, old = prepared_out(tmp_path, old_args)
    code, text = run_edge(*new_args, "--out", out, env={CRASH_ENV: point})
    assert code == -signal.SIGKILL, text
    assert state_of(out, old) == ("new" if point == "publish:after-exchange" else "old")
    code, text = run_edge(*new_args, "--out", out)
    assert code == 0, text
    assert state_of(out, old) == "new"
    assert staging_leftovers(out) == []


def test_kill_before_the_first_publish_leaves_no_folder(sources, tmp_path):
    out = tmp_path / "fresh" / "out"
    code, _ = run_edge(*conversions(sources)["gguf"][1], "--out", out, env={CRASH_ENV: "publish:before-rename"})
    assert code == -signal.SIGKILL
    assert not out.exists()
    code, text = run_edge(*conversions(sources)["gguf"][1], "--out", out)
    assert code == 0, text
    assert staging_leftovers(out) == [] and (out / "conversion.json").is_file()


def test_kill_while_moving_file_by_file_is_finished_by_the_next_run(sources, tmp_path):
    """--out is the working directory (never swapped from under a shell): files move one by one after a journal;
    killed after the first move, --out is mixed until the next run into it rolls the journal forward."""
    old_args, new_args = conversions(sources)["onnx-3-modes"]
    out, old = prepared_out(tmp_path, old_args)
    code, _ = run_edge(*new_args, "--out", ".", cwd=out, env={CRASH_ENV: "publish:moved-one"})
    assert code == -signal.SIGKILL
    assert any(STAGING_TAG in p.name for p in out.parent.iterdir())  # the journaled staging folder waits
    with StagingDir(out):  # any next run into the folder: it finishes the killed run's moves first
        pass
    assert state_of(out, old) == "new"
    assert staging_leftovers(out) == []


@pytest.mark.slow
def test_kill_at_20_random_moments(sources, tmp_path):
    """ONNX with three modes, TFLite and GGUF conversions SIGKILLed at 20 random moments of their run:
    every time --out is the old set or the complete new one; a last run leaves no staging folder."""
    rng = random.Random(16)
    seen = []
    for name, (old_args, new_args) in conversions(sources).items():
        case = tmp_path / name
        out, old = prepared_out(case, old_args)
        t0 = time.perf_counter()
        code, text = run_edge(*new_args, "--out", case / "timing")
        assert code == 0, text
        duration = time.perf_counter() - t0
        for _ in range(7 if name != "gguf" else 6):
            p = edge(*new_args, "--out", out)
            time.sleep(rng.uniform(0.3, 1.05) * duration)
            p.send_signal(signal.SIGKILL)
            p.communicate()
            seen.append((name, state_of(out, old)))
        code, text = run_edge(*new_args, "--out", out)
        assert code == 0, text
        assert state_of(out, old) == "new" and staging_leftovers(out) == []
    assert len(seen) == 20
    print("kill outcomes:", seen)


# --- full and read-only file systems ------------------------------------------------------------------

@pytest.fixture
def small_tmpfs(tmp_path):
    """A 256 KiB tmpfs (root only): an ONNX conversion of the digits CNN in three modes does not fit."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_is_one_line_and_leaves_nothing(sources, small_tmpfs):
    out = small_tmpfs / "out"
    code, text = run_edge("convert", sources["onnx"], "-q", "none", "-q", "fp16", "-q", "int8-dynamic", "--out", out)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert code == 2, text
    assert lines[-1].startswith("error:") and "No space left on device" in lines[-1], text
    assert "Traceback" not in text
    assert list(small_tmpfs.iterdir()) == [], sorted(p.name for p in small_tmpfs.iterdir())


def test_full_disk_keeps_the_previous_set(sources, small_tmpfs):
    out = small_tmpfs / "out"
    code, text = run_edge("convert", sources["onnx"], "-q", "int8-dynamic", "--out", out)
    assert code == 0, text
    old = snapshot(out)
    code, text = run_edge("convert", sources["onnx"], "-q", "none", "-q", "fp16", "--out", out)
    assert code == 2 and "No space left on device" in text, text
    assert snapshot(out) == old and staging_leftovers(out) == []


def test_read_only_file_system(sources, small_tmpfs):
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    code, text = run_edge("convert", sources["onnx"], "--out", small_tmpfs / "out")
    assert code == 2 and "Read-only file system" in text and "Traceback" not in text, text


def test_dangling_symlink_out(sources, tmp_path):
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "nowhere")
    code, text = run_edge("convert", sources["onnx"], "--out", link)
    assert code == 2 and "symbolic link to nothing" in text, text
    assert not (tmp_path / "nowhere").exists()


def test_symlink_to_a_folder_publishes_into_the_folder(sources, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    code, text = run_edge("convert", sources["onnx"], "--out", tmp_path / "link")
    assert code == 0, text
    assert (tmp_path / "link").is_symlink() and (real / "conversion.json").is_file()
