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

_REPO_ID = re.compile(r"^(?P<org>[A-Za-z0-9][\w.-]{0,95})/(?P<name>[A-Za-z0-9][\w.-]{0,95})(?:@(?P<rev>[\w./-]{1,128}))?"
                      r"(?::(?P<pick>[\w./-]{1,200}))?$")
MODEL_SUFFIXES = (".gguf", ".onnx", ".tflite", ".mlpackage")
_SPLIT_PART = re.compile(r"-(\d{5})-of-\d{5}\.gguf$")  # llama.cpp's split files: the first part names the model


def hub_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
    return home / "hub"


def looks_like_repo_id(source: str) -> bool:
    return bool(_REPO_ID.match(source)) and not Path(source).exists()


def resolve_repo_id(source: str, checkpoint: bool = True) -> Path:
    """The cached snapshot folder of ``ORG/NAME`` (or ``ORG/NAME@REVISION``); ModelNotFoundError naming where it
    looked and how to fetch it otherwise. ``checkpoint``: the snapshot must hold a config.json (a checkpoint to
    convert), else any snapshot (a repository of model files to run)."""
    m = _REPO_ID.match(source)
    if m is None or m["pick"]:
        raise ModelNotFoundError(f"{source!r} is not a Hugging Face model id (ORG/NAME)")
    repo = hub_cache_dir() / f"models--{m['org']}--{m['name']}"
    rev = m["rev"] or "main"
    commit = rev
    ref = repo / "refs" / rev
    if ref.is_file():
        commit = ref.read_text().strip()
    snapshot = repo / "snapshots" / commit
    if not re.fullmatch(r"[\w.-]+", commit) or not snapshot.is_dir() or (checkpoint and not (snapshot / "config.json").exists()):
        raise ModelNotFoundError(
            f"{source} is neither a path here nor a model in the local Hugging Face cache ({repo}"
            f"{'' if repo.is_dir() else ', not there'}); edgelift never downloads: fetch it with "
            f"`hf download {m['org']}/{m['name']}` (huggingface_hub), or pass the checkpoint's folder")
    return snapshot


def resolve_model_file(source: str) -> Path:
    """One model file of a cached repository: ``ORG/NAME`` when it holds a single one (.gguf, .onnx, .tflite,
    .mlpackage), else ``ORG/NAME:PICK`` with PICK a part of the file's path, e.g. a quantization as llama.cpp's
    ``-hf ORG/NAME:Q4_K_M`` takes it. Nothing is downloaded; ambiguity is refused with the candidates listed."""
    m = _REPO_ID.match(source)
    if m is None:
        raise ModelNotFoundError(f"{source!r} is not a Hugging Face model id (ORG/NAME or ORG/NAME:PICK)")
    repo = source.split(":", 1)[0]
    snapshot = resolve_repo_id(repo, checkpoint=False)
    files = sorted(f for f in snapshot.rglob("*") if f.suffix.lower() in MODEL_SUFFIXES
                   and (f.is_file() or f.suffix.lower() == ".mlpackage") and ".mlpackage/" not in
                   f.relative_to(snapshot).as_posix())
    files = [f for f in files if (m_ := _SPLIT_PART.search(f.name)) is None or m_.group(1) == "00001"]
    names = [f.relative_to(snapshot).as_posix() for f in files]
    pick = m["pick"]
    if pick:
        chosen = [f for f, n in zip(files, names) if pick.lower() in n.lower()]
        exact = [f for f, n in zip(files, names) if pick.lower() == n.lower()]
        files = exact or chosen
    if len(files) == 1:
        return files[0]
    what = f"matching '{pick}'" if pick else "model files (.gguf, .onnx, .tflite, .mlpackage)"
    if not files:
        raise ModelNotFoundError(f"{repo} is cached ({snapshot}) but holds no {what}"
                                 + (f"; it has: {', '.join(names[:8])}" if names else ""))
    shown = [f.relative_to(snapshot).as_posix() for f in files]
    raise ModelNotFoundError(f"{repo} holds {len(files)} {what}: {', '.join(shown[:8])}"
                             f"{' ...' if len(shown) > 8 else ''}; pick one with {repo}:PART, e.g. "
                             f"{repo}:{Path(shown[0]).stem}")


def resolve_model_path(path: str | Path) -> Path:
    """``path`` as given when it exists (or is no model id), else the cached model file it names."""
    s = str(path)
    if Path(s).exists() or not looks_like_repo_id(s):
        return Path(s)
    return resolve_model_file(s)

