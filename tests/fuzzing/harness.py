"""Run mutants through edgelift's entry points, each in its own process, and classify what happened.

A worker process imports every heavy module once (numpy, onnxruntime, onnx, torch, LiteRT, llama.cpp,
coremltools) and forks one child per case: the child gets an address-space limit (its size at fork +
``MEMORY_LIMIT_BYTES``), its stdout/stderr go to files, and it runs one entry point on one mutant.
The worker waits with a timeout and reports how the child ended:

- ``accepted``: the entry point returned (exit 0) — the mutant was still a valid file;
- ``clean``: a typed ``edgelift.errors`` exception (API) or exit 2 with one ``error:`` line (CLI);
- failures: ``traceback`` (any other exception, or a CLI exit other than 0/2), ``memory``
  (MemoryError: an allocation past the limit), ``signal:<name>`` (a native abort or crash),
  ``hang`` (still running after the timeout), ``code-execution`` (a planted payload ran).

``python -m tests.fuzzing.harness --per-format 300`` runs a full campaign and prints the table.
"""

from __future__ import annotations

import json
import os
import random
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

MEMORY_LIMIT_BYTES = 4 << 30
TIMEOUT_S = 30.0
CLEAN = ("accepted", "clean")
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Case:
    id: str
    format: str
    entry: str
    path: str  # the mutant
    description: str
    seed: str = ""


@dataclass
class Outcome:
    case: Case
    outcome: str
    detail: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.outcome in CLEAN


# --- the child: one entry point on one mutant ----------------------------------------------------------

def _limit_memory() -> None:
    with open("/proc/self/statm") as f:
        size = int(f.read().split()[0]) * resource.getpagesize()
    limit = size + MEMORY_LIMIT_BYTES
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _child(case: Case, workdir: Path) -> None:
    """Runs in the forked child; never returns."""
    out = os.open(workdir / "out.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(out, 1)
    os.dup2(out, 2)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    result: dict = {}
    try:
        from . import entries

        _limit_memory()
        os.environ["EDGELIFT_DEBUG"] = "1"  # the CLI re-raises what it would report as an internal error: we see it
        os.chdir(workdir)
        kind, value = entries.run(case.format, case.entry, Path(case.path), workdir)
        result = {"kind": kind, "value": value}
    except MemoryError:
        result = {"kind": "memory", "value": traceback.format_exc(limit=-8)}
    except BaseException as e:  # noqa: BLE001 - the point is to see anything that escapes
        result = {"kind": "exception", "value": f"{type(e).__module__}.{type(e).__name__}: {e}"[:500],
                  "traceback": traceback.format_exc(limit=-8)}
    try:
        (workdir / "result.json").write_text(json.dumps(result))
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(0)


def classify(case: Case, status: int | None, workdir: Path) -> tuple[str, str]:
    from . import entries

    if status is None:
        return "hang", f"still running after {TIMEOUT_S:.0f} s"
    if os.WIFSIGNALED(status):
        return f"signal:{signal.Signals(os.WTERMSIG(status)).name}", _tail(workdir / "out.txt")
    if entries.payload_ran(workdir):
        return "code-execution", "a planted payload ran"
    try:
        result = json.loads((workdir / "result.json").read_text())
    except (OSError, ValueError):
        return "traceback", "the child died without a result: " + _tail(workdir / "out.txt")
    kind, value = result["kind"], result["value"]
    output = (workdir / "out.txt").read_text(errors="replace") if (workdir / "out.txt").exists() else ""
    if kind == "memory":
        return "memory", value.strip().splitlines()[-1][:300]
    if kind == "exception":
        return "traceback", value + " | " + result.get("traceback", "").strip().splitlines()[-3][:200]
    if kind == "returned":
        return "accepted", ""
    if kind == "left-output":
        return "left-output", value
    if kind == "edge-error":
        if "\n" in value.strip():
            return "traceback", f"multi-line error message: {value[:300]!r}"
        return "clean", value[:200]
    if kind == "exit":  # the CLI: 0, or 2 / 3 with one error: line, never a traceback
        if "Traceback (most recent call last)" in output:
            return "traceback", _tail(workdir / "out.txt")
        if value == 0:
            return "accepted", ""
        if value in (2, 3):  # bad input, or an artifact below its parity gate
            errors = [ln for ln in output.splitlines() if ln.startswith("error:")]
            if len(errors) == 1:
                return "clean", errors[0][:200]
            return "traceback", f"exit 2 without exactly one 'error:' line: {_tail(workdir / 'out.txt')}"
        return "traceback", f"exit code {value}: {_tail(workdir / 'out.txt')}"
    return "traceback", f"unknown result {kind}"


def _tail(path: Path, n: int = 400) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return ""
    return " | ".join(text.splitlines()[-4:])[-n:]


# --- the worker: forks children, enforces the timeout -------------------------------------------------

def serve(jobs: int) -> None:
    """Read cases (JSON lines) on stdin, write outcomes (JSON lines) on stdout; ``jobs`` children at once."""
    from . import entries

    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # stray prints must not corrupt the protocol
    entries.preload()
    running: dict[int, tuple[Case, Path, float]] = {}
    pending: list[Case] = []
    stdin_open, buffered = True, b""
    protocol.write(json.dumps({"ready": True}) + "\n")
    while stdin_open or pending or running:
        if stdin_open:  # read eagerly (the parent writes every case before reading outcomes), raw (see select)
            ready, _, _ = select.select([0], [], [], 0 if (pending or running) else None)
            if ready:
                chunk = os.read(0, 1 << 16)
                stdin_open = bool(chunk)
                buffered += chunk
                *lines, buffered = buffered.split(b"\n")
                pending += [Case(**json.loads(ln)) for ln in lines if ln.strip()]
        while pending and len(running) < jobs:
            case = pending.pop(0)
            workdir = Path(tempfile.mkdtemp(prefix="case-", dir=os.environ.get("EDGE_FUZZ_TMP")))
            pid = os.fork()
            if pid == 0:
                _child(case, workdir)
            running[pid] = (case, workdir, time.monotonic())
        for pid, (case, workdir, t0) in list(running.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done == 0 and time.monotonic() - t0 < TIMEOUT_S:
                continue
            if done == 0:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                status = None
            outcome, detail = classify(case, status, workdir)
            protocol.write(json.dumps(asdict(Outcome(case, outcome, detail, round(time.monotonic() - t0, 3)))) + "\n")
            shutil.rmtree(workdir, ignore_errors=True)
            del running[pid]
        if running:
            time.sleep(0.002)


class Worker:
    """The parent's handle on a worker process (``python -m tests.fuzzing.harness --serve``)."""

    def __init__(self, jobs: int = 2, tmp: Path | None = None) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "EDGE_FUZZ_TMP": str(tmp or "")}
        if not tmp:
            env.pop("EDGE_FUZZ_TMP")
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.fuzzing.harness", "--serve", "--jobs", str(jobs)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO, env=env)
        first = self.proc.stdout.readline()
        if not first.strip():
            raise RuntimeError("the fuzz worker did not start")

    def run(self, cases: list[Case], on_outcome=None) -> list[Outcome]:
        for c in cases:
            self.proc.stdin.write(json.dumps(asdict(c)) + "\n")
        self.proc.stdin.flush()
        by_id: dict[str, Outcome] = {}
        for _ in cases:  # outcomes arrive as cases finish, not in order
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("the fuzz worker died")
            d = json.loads(line)
            o = Outcome(Case(**d["case"]), d["outcome"], d["detail"], d["seconds"])
            by_id[o.case.id] = o
            if on_outcome:
                on_outcome(o)
        return [by_id[c.id] for c in cases]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


# --- campaigns -------------------------------------------------------------------------------------------

@dataclass
class Campaign:
    outcomes: list[Outcome] = field(default_factory=list)

    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    def table(self) -> str:
        counts: dict[tuple[str, str], Counter] = defaultdict(Counter)
        for o in self.outcomes:
            counts[(o.case.format, o.case.entry)][o.outcome] += 1
        kinds = ["accepted", "clean"] + sorted({o.outcome for o in self.outcomes} - set(CLEAN))
        head = f"{'format':12} {'entry point':22} {'mutants':>7} " + " ".join(f"{k:>9}" for k in kinds)
        rows = [head, "-" * len(head)]
        per_format: Counter = Counter()
        for (fmt, entry), c in sorted(counts.items()):
            per_format[fmt] += sum(c.values())
            rows.append(f"{fmt:12} {entry:22} {sum(c.values()):7d} " + " ".join(f"{c[k]:9d}" for k in kinds))
        rows.append("-" * len(head))
        rows.append("mutants per format: " + ", ".join(f"{f} {n}" for f, n in sorted(per_format.items())))
        return "\n".join(rows)


def make_cases(formats, per_format: int, root: Path, seed: int = 0) -> list[Case]:
    """``per_format`` mutants of each format (times its weight), spread over its mutators, seeds and entry points."""
    cases = []
    for fmt in formats:
        for i in range(round(per_format * fmt.weight)):
            rng = random.Random(f"{seed}:{fmt.name}:{i}")
            src = rng.choice(fmt.seeds)
            mutator = fmt.mutators[i % len(fmt.mutators)]
            dst = root / fmt.name / f"{i:05d}{fmt.suffix}"
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                description = mutator(src, dst, rng)
            except Exception as e:  # a mutator that cannot apply to this seed: skip, deterministically
                description = f"(mutator failed: {type(e).__name__}: {e}) copy of seed"
                shutil.rmtree(dst, ignore_errors=True) if dst.is_dir() else dst.unlink(missing_ok=True)
                _copy(src, dst)
            entry = fmt.entries[i % len(fmt.entries)]
            cases.append(Case(f"{fmt.name}-{i:05d}", fmt.name, entry, str(dst),
                              f"{mutator.__name__}: {description}", src.name))
    return cases


def _copy(src: Path, dst: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copyfile(src, dst)


def run_campaign(formats, per_format: int, root: Path, jobs: int = 2, seed: int = 0, progress=None) -> Campaign:
    cases = make_cases(formats, per_format, root, seed)
    worker = Worker(jobs, root)
    try:
        done = 0

        def tick(o: Outcome) -> None:
            nonlocal done
            done += 1
            if progress:
                progress(done, len(cases), o)

        return Campaign(worker.run(cases, tick))
    finally:
        worker.close()


def save_reproducer(o: Outcome, folder: Path) -> Path:
    """Copy a failing mutant (and an external-data sidecar beside it) into ``folder`` and list it in
    ``reproducers.json``: the regression test runs every listed file through its entry point again."""
    folder.mkdir(parents=True, exist_ok=True)
    src = Path(o.case.path)
    tag = zlib.crc32(o.case.description.encode()) & 0xFFFF  # ids repeat across campaign seeds
    name = f"{o.case.format}-{o.case.entry}-{o.case.id.split('-')[-1]}-{tag:04x}{src.suffix}"
    sidecar = src.parent / f"{src.stem}.onnx.data"
    if sidecar.exists():  # external data: model and sidecar keep their names (the model's bytes point at it)
        sub = folder / Path(name).stem
        sub.mkdir(exist_ok=True)
        shutil.copyfile(sidecar, sub / sidecar.name)
        name = f"{sub.name}/{src.name}"
    _copy(src, folder / name)
    index = folder / "reproducers.json"
    listed = json.loads(index.read_text()) if index.exists() else []
    listed.append({"file": name, "format": o.case.format, "entry": o.case.entry, "mutation": o.case.description,
                   "found": f"{o.outcome}: {o.detail[:300]}"})
    index.write_text(json.dumps(listed, indent=1) + "\n")
    return folder / name


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--per-format", type=int, default=300)
    ap.add_argument("--formats", default="", help="comma-separated subset")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds-dir", type=Path, default=REPO / ".cache" / "fuzz-seeds")
    ap.add_argument("--json", type=Path, help="write every outcome here")
    ap.add_argument("--save-failures", type=Path, help="copy each failing mutant here, with reproducers.json")
    ap.add_argument("--keep", default="", help="case ids (coreml-00005,...) to copy to --save-failures without running")
    args = ap.parse_args(argv)
    if args.serve:
        serve(args.jobs)
        return 0
    from .formats import all_formats
    from .seeds import build_seeds

    seeds = build_seeds(args.seeds_dir)
    formats = [f for f in all_formats(seeds) if not args.formats or f.name in args.formats.split(",")]
    with tempfile.TemporaryDirectory(prefix="edge-fuzz-") as tmp:
        if args.keep:  # regenerate mutants found failing earlier (same seed, same count): reproducers for a fix
            wanted = set(args.keep.split(","))
            for c in make_cases(formats, args.per_format, Path(tmp), args.seed):
                if c.id in wanted:
                    print(save_reproducer(Outcome(c, "found", "re-generated"), args.save_failures))
            return 0
        t0 = time.time()

        def progress(done: int, total: int, o: Outcome) -> None:
            if not o.ok:
                print(f"FAIL {o.case.id} {o.case.entry} [{o.outcome}] {o.case.description} :: {o.detail}", flush=True)
                if args.save_failures:
                    save_reproducer(o, args.save_failures)
            if done % 100 == 0 or done == total:
                print(f"# {done}/{total} mutants, {time.time() - t0:.0f} s", file=sys.stderr, flush=True)

        campaign = run_campaign(formats, args.per_format, Path(tmp), args.jobs, args.seed, progress)
    print(campaign.table())
    if args.json:
        args.json.write_text(json.dumps([asdict(o) for o in campaign.outcomes], indent=1))
    failures = campaign.failures()
    print(f"{len(campaign.outcomes)} mutants, {len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
