"""Throwaway virtual environments that hold edgelift as a device would install it."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def base_venv() -> Path:
    """`pip install edgelift` with no extras, as on a device; returns the venv's python."""
    return device_venv("base", "")


def build_wheel(out_dir: Path) -> Path:
    """The wheel `make wheel` builds (pip wheel of this checkout, no dependencies), into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("edgelift-*.whl"):
        old.unlink()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps",
                    "-w", str(out_dir), str(REPO)], check=True, timeout=900, capture_output=True)
    (wheel,) = out_dir.glob("edgelift-*.whl")
    return wheel


def device_venv(name: str, extras: str) -> Path:
    """A venv under .cache/ with edgelift[extras] installed from a wheel file built from this checkout (never
    from a registry by name); returns its python.

    Dependencies are installed when the venv is new or pyproject.toml changed; edgelift itself is
    reinstalled from a fresh wheel (without dependencies) every call, so the venv always runs the current code.
    """
    root = REPO / ".cache" / f"venv-{name}"
    digest = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()
    stamp = root / ".pyproject.sha256"
    python = root / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    wheel = build_wheel(REPO / ".cache" / "wheel")
    if not stamp.exists() or stamp.read_text() != digest:
        shutil.rmtree(root, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=300)
        subprocess.run([*pip, f"{wheel}{'[' + extras + ']' if extras else ''}"], check=True, timeout=900,
                       capture_output=True)
        stamp.write_text(digest)
    subprocess.run([*pip, "--no-deps", "--force-reinstall", str(wheel)], check=True, timeout=900, capture_output=True)
    return python
