"""README.md cannot drift: every bash and Python block in it runs here, top to bottom in one scratch folder as
a reader following it would (the files one block makes are the next one's inputs), or carries the reason it
cannot run here in the marker right above it: ``<!-- readme-test: run -->`` or
``<!-- readme-test: skip: WHY -->``. A block without a marker fails the first test."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"(?:<!-- readme-test: (?P<mark>run|skip: (?P<why>[^\n]*?)) -->\n)?```(?P<lang>bash|python)\n"
                   r"(?P<code>.*?)```", re.S)


def readme_blocks() -> list[dict]:
    text = (REPO / "README.md").read_text()
    return [dict(line=text[:m.start()].count("\n") + 1, lang=m["lang"], mark=m["mark"], why=m["why"], code=m["code"])
            for m in BLOCK.finditer(text)]


def test_every_readme_block_runs_or_says_why():
    blocks = readme_blocks()
    assert len(blocks) >= 15
    unmarked = [b["line"] for b in blocks if b["mark"] is None]
    assert not unmarked, f"README blocks at lines {unmarked} have no readme-test marker"
    for b in blocks:
        assert b["mark"] == "run" or len(b["why"].strip()) > 20, f"line {b['line']}: say why it cannot run"
    assert sum(b["mark"] == "run" for b in blocks) >= 12


@pytest.mark.slow
def test_readme_blocks_run_as_written(tmp_path):
    """In a scratch folder holding a copy of examples/ (what a clone has), with the venv's `edge` on PATH."""
    shutil.copytree(REPO / "examples", tmp_path / "examples",
                    ignore=shutil.ignore_patterns("artifacts", "__pycache__"))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=str(tmp_path), EDGELIFT_MODEL_CACHE=str(REPO / ".cache" / "models"),
               HF_HUB_OFFLINE="1")
    env.pop("EDGELIFT_DEBUG", None)
    ran = 0
    for b in readme_blocks():
        if b["mark"] != "run":
            continue
        cmd = (["bash", "-euo", "pipefail", "-c", b["code"]] if b["lang"] == "bash"
               else [sys.executable, "-c", b["code"]])
        r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        first = b["code"].strip().splitlines()[0]
        assert r.returncode == 0, f"README line {b['line']} ({first}) exited {r.returncode}:\n{r.stderr[-3000:]}"
        ran += 1
    # what the blocks promise exists: artifacts, reports, the patched model, the GGUF conversion
    for made in ("build/digits/digits.int4.onnx", "build/digits/conversion.json", "out.npz", "int8.html",
                 "int4.csv", "compare.html", "mnv2.patched.onnx", "profile.svg", "build/tfl/digits.int8.tflite",
                 "build/cm/digits.int8.mlpackage", "build/gguf/SmolLM2-135M-Instruct.Q4_K_M.gguf", "llm.json"):
        assert (tmp_path / made).exists(), made
    assert (tmp_path / "int4.csv").read_text().startswith("model,format,backend,setting")
    assert ran >= 12
