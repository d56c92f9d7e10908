"""The fuzz suite: seeded mutants of every format through the CLI and the public API, each case in its own
process under a 4 GiB address-space limit and a 30 s timeout (``tests/fuzzing/``). Every outcome must be
clean (a typed ``edgelift.errors`` exception, or exit 2 with one ``error:`` line) or accepted: no traceback,
no signal, no hang, no allocation past the limit, no planted payload run, no half-written ``--out``.

The fast run here tries a few hundred mutants; ``make fuzz`` (``-m fuzz``) runs 300 per format. Every
failure found is a reproducer in ``tests/data/fuzz/`` (``reproducers.json``), re-run by
``test_reproducers``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.fuzzing.formats import all_formats
from tests.fuzzing.harness import Case, Worker, run_campaign

DATA = Path(__file__).resolve().parent / "data" / "fuzz"
FAST_PER_FORMAT = 30
FULL_PER_FORMAT = 300


@pytest.fixture(scope="module")
def seeds(fuzz_seeds) -> Path:
    return fuzz_seeds


def _report(campaign) -> str:
    lines = [campaign.table()]
    for o in campaign.failures():
        lines.append(f"FAIL {o.case.id} {o.case.entry} [{o.outcome}] {o.case.description} :: {o.detail}")
    return "\n".join(lines)


def test_seeds_are_accepted_by_every_entry_point(seeds):
    """The unmutated files pass every entry point: a mutant's refusal is about its mutation, not the harness."""
    cases = [Case(f"{f.name}-seed-{i}", f.name, entry, str(s), "seed")
             for f in all_formats(seeds) for i, s in enumerate(f.seeds) for entry in f.entries]
    worker = Worker(jobs=2)
    try:
        outcomes = worker.run(cases)
    finally:
        worker.close()
    bad = [f"{o.case.format}/{o.case.entry} on {Path(o.case.path).name}: {o.outcome} {o.detail}" for o in outcomes
           if o.outcome != "accepted"]
    assert not bad, "\n".join(bad)


def test_the_harness_sees_failures(tmp_path):
    """Each kind of failure is classified as one: a hang, a native abort, an untyped exception, a CLI exit
    other than 0/2, a payload that ran (the classifier is what makes every other fuzz test able to fail)."""
    from tests.fuzzing.harness import classify

    case = Case("x", "report", "cli-report", str(tmp_path / "m.json"), "")
    assert classify(case, None, tmp_path)[0] == "hang"
    assert classify(case, 6, tmp_path)[0] == "signal:SIGABRT"  # wait status of a child killed by SIGABRT
    (tmp_path / "result.json").write_text(json.dumps({"kind": "exception", "value": "KeyError: 'x'", "traceback": "a\nb\nc"}))
    assert classify(case, 0, tmp_path)[0] == "traceback"
    (tmp_path / "result.json").write_text(json.dumps({"kind": "exit", "value": 1}))
    assert classify(case, 0, tmp_path)[0] == "traceback"
    (tmp_path / "result.json").write_text(json.dumps({"kind": "exit", "value": 2}))
    (tmp_path / "out.txt").write_text("Traceback (most recent call last):\n  ...\nerror: x\n")
    assert classify(case, 0, tmp_path)[0] == "traceback"
    (tmp_path / "out.txt").write_text("error: one line\n")
    assert classify(case, 0, tmp_path)[0] == "clean"
    (tmp_path / "result.json").write_text(json.dumps({"kind": "edge-error", "value": "two\nlines"}))
    assert classify(case, 0, tmp_path)[0] == "traceback"
    (tmp_path / "result.json").write_text(json.dumps({"kind": "memory", "value": "MemoryError"}))
    assert classify(case, 0, tmp_path)[0] == "memory"
    (tmp_path / "PAYLOAD_RAN").mkdir()
    assert classify(case, 0, tmp_path)[0] == "code-execution"


def test_fuzz_every_format(seeds, tmp_path):
    campaign = run_campaign(all_formats(seeds), FAST_PER_FORMAT, tmp_path, jobs=2, seed=1616)
    print(campaign.table())
    assert len(campaign.outcomes) == sum(round(FAST_PER_FORMAT * f.weight) for f in all_formats(seeds))
    assert not campaign.failures(), _report(campaign)


@pytest.mark.slow
@pytest.mark.fuzz
def test_fuzz_campaign_300_per_format(seeds, tmp_path):
    campaign = run_campaign(all_formats(seeds), FULL_PER_FORMAT, tmp_path, jobs=2, seed=int(os.environ.get("EDGE_FUZZ_SEED", 0)))
    print(campaign.table())
    assert not campaign.failures(), _report(campaign)


def test_reproducers(seeds):
    """Every failure ever found, from its reproducer file, through the entry point that failed on it: each now
    ends in a typed error, or (a device report cut short) in a report marked partial."""
    listed = json.loads((DATA / "reproducers.json").read_text())
    cases = [Case(f"repro-{i}", r["format"], r["entry"], str(DATA / r["file"]), r["found"]) for i, r in enumerate(listed)]
    worker = Worker(jobs=2)
    try:
        outcomes = worker.run(cases)
    finally:
        worker.close()
    bad = [f"{r['file']} via {r['entry']} ({r['found']}): {o.outcome} {o.detail}" for r, o in zip(listed, outcomes)
           if not o.ok]
    assert not bad, "\n".join(bad)
    assert {r["format"] for r in listed} >= {"onnx", "tflite", "coreml", "gguf", "pt2", "npz", "stream"}
