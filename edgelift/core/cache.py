"""Where edgelift keeps what it derives from your files (patch plans, the wheel sent to devices)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "EDGELIFT_CACHE"


def cache_root() -> Path:
    """``$EDGELIFT_CACHE``, else ``~/.cache/edgelift``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "edgelift")
