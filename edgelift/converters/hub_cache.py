"""Hugging Face model ids (``HuggingFaceTB/SmolLM2-135M``) resolved from the local Hugging Face cache only.

edgelift never downloads: a model id is looked up where ``huggingface_hub`` keeps what the user already
fetched (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``), in its layout:
``models--ORG--NAME/refs/main`` names a commit, ``snapshots/COMMIT/`` holds the files. No network, and no
``huggingface_hub`` import (it is not needed to read a folder).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import ModelNotFoundError

_REPO_ID = re.compile(r"^(?P<org>[A-Za-z0-9][\w.-]{0,95})/(?P<name>[A-Za-z0-9][\w.-]{0,95})(?:@(?P<rev>[\w./-]{1,128}))?$")


def hub_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
    return home / "hub"


def looks_like_repo_id(source: str) -> bool:
    return bool(_REPO_ID.match(source)) and not Path(source).exists()


def resolve_repo_id(source: str) -> Path:
    """The cached snapshot folder of ``ORG/NAME`` (or ``ORG/NAME@REVISION``); ModelNotFoundError naming where it
    looked and how to fetch it otherwise."""
    m = _REPO_ID.match(source)
    if m is None:
        raise ModelNotFoundError(f"{source!r} is not a Hugging Face model id (ORG/NAME)")
    repo = hub_cache_dir() / f"models--{m['org']}--{m['name']}"
    rev = m["rev"] or "main"
    commit = rev
    ref = repo / "refs" / rev
    if ref.is_file():
        commit = ref.read_text().strip()
    snapshot = repo / "snapshots" / commit
    if not re.fullmatch(r"[\w.-]+", commit) or not snapshot.is_dir() or not (snapshot / "config.json").exists():
        raise ModelNotFoundError(
            f"{source} is neither a path here nor a model in the local Hugging Face cache ({repo}"
            f"{'' if repo.is_dir() else ', not there'}); edgelift never downloads: fetch it with "
            f"`hf download {m['org']}/{m['name']}` (huggingface_hub), or pass the checkpoint's folder")
    return snapshot
