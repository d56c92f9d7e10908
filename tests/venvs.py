"""Throwaway virtual environments that hold edge-sdk as a device would install it."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def base_venv() -> Path:
    """`pip install edge-sdk` with no extras, as on a device; returns the venv's python."""
    return device_venv("base", "")


def device_venv(name: str, extras: str) -> Path:
    """A venv under .cache/ with `pip install edge-sdk[extras]` from this checkout; returns its python.

    Dependencies are installed when the venv is new or pyproject.toml changed; edge-sdk itself is
    reinstalled (without dependencies) every call, so the venv always runs the current code.
    """
    root = REPO / ".cache" / f"venv-{name}"
    digest = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()
    stamp = root / ".pyproject.sha256"
    python = root / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    if not stamp.exists() or stamp.read_text() != digest:
        shutil.rmtree(root, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=300)
        subprocess.run([*pip, f"{REPO}{'[' + extras + ']' if extras else ''}"], check=True, timeout=900,
                       capture_output=True)
        stamp.write_text(digest)
    else:
        subprocess.run([*pip, "--no-deps", "--force-reinstall", str(REPO)], check=True, timeout=900,
                       capture_output=True)
    return python
