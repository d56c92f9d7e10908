"""The capture set is complete and honest: every real device capture is read by a test, listed in
docs/device-outputs.md, and identical to the shared reference copy when that is present."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CAPTURES = ROOT / "tests" / "data" / "captures"
SHARED = ROOT.parent / "shared" / "reference" / "captures"
CAPTURE_FILES = sorted(p.name for p in CAPTURES.iterdir() if p.is_file() and p.name != "SOURCES.md")


def test_every_capture_is_read_by_a_test_and_listed_in_the_docs():
    tests = "".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py") if p.name != Path(__file__).name)
    docs = (ROOT / "docs" / "device-outputs.md").read_text()
    assert len(CAPTURE_FILES) >= 17
    assert [f for f in CAPTURE_FILES if f not in tests] == []
    assert [f for f in CAPTURE_FILES if f"`{f}`" not in docs] == []
    sources = (CAPTURES / "SOURCES.md").read_text()
    assert [f for f in CAPTURE_FILES if f not in sources] == []  # every file has its provenance


def test_copies_match_the_shared_reference():
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is not here (a clone outside the workplace): the copies stand alone")
    shared = sorted(p.name for p in SHARED.iterdir() if p.is_file())
    assert sorted([*CAPTURE_FILES, "SOURCES.md"]) == shared
    assert [f for f in shared if (SHARED / f).read_bytes() != (CAPTURES / f).read_bytes()] == []
