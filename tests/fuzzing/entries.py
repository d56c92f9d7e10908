"""Entry points the fuzzer drives: the CLI commands users type and the public Python API, per format.

``run(format, entry, path, workdir)`` returns ("exit", code) for CLI entries, ("returned", None) or
("edge-error", message) for API entries; anything else escapes to the harness as a failure. CLI
entries that write ``--out`` also check it: a failed run must leave no output folder behind.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

PAYLOAD_MARK = "PAYLOAD_RAN"  # planted pickles create this directory (relative to the case's workdir)
SEEDS_ENV = "EDGE_FUZZ_SEEDS"


def preload() -> None:
    """Import what the entry points use before forking, so each case starts in milliseconds."""
    import edgelift.cli  # noqa: F401
    from edgelift.runtimes import model

    model.backends()
    for name in ("onnx", "onnxruntime", "torch", "ai_edge_litert.interpreter", "llama_cpp", "tflite",
                 "safetensors.torch", "edgelift.converters.api", "edgelift.converters.inspect",
                 "edgelift.converters.tflite.reader", "edgelift.converters.coreml.executor",
                 "edgelift.converters.gguf.api", "edgelift.runtimes.patch", "edgelift.profilers.targets.stream",
                 "edgelift.profilers.html", "coremltools", "examples.digits.model"):
        try:
            __import__(name)
        except Exception:  # optional extras: the entry points that need them report it themselves
            pass
    # warm the CLI's lazy imports with commands that start no threads (ONNX Runtime pools must not be forked)
    for argv in (("--version",), ("inspect", seeds() / "digits.onnx"), ("inspect", seeds() / "tiny.gguf"),
                 ("report", seeds() / "report.json")):
        cli(*argv)


def payload_ran(workdir: Path) -> bool:
    return (workdir / PAYLOAD_MARK).exists()


def seeds() -> Path:
    return Path(os.environ[SEEDS_ENV])


def cli(*argv: str) -> tuple[str, int]:
    from edgelift.cli import main

    sys.argv = ["edge", *map(str, argv)]
    try:
        main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        return "exit", code
    return "exit", 0


def cli_writing(out: Path, *argv: str) -> tuple[str, object]:
    """A CLI command with ``--out``: on failure the folder must not exist (nothing half-written); exit 3 (an
    artifact below its parity gate) publishes the complete rest, its report saying which failed."""
    kind, code = cli(*argv, "--out", str(out))
    if code == 3 and out.exists() and not _report_marks_a_failure(out):
        return "left-output", f"exit 3 left {out.name}/ without a report marking the failed artifact"
    if code not in (0, 3) and out.exists():
        listing = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
        return "left-output", f"exit {code} left {out.name}/ with {listing[:5]}"
    if any(".edge-staging-" in p.name for p in out.parent.iterdir()):
        return "left-output", "a staging folder was left beside --out"
    return kind, code


def _report_marks_a_failure(out: Path) -> bool:
    import json

    try:
        doc = json.loads((out / "conversion.json").read_text())
    except (OSError, ValueError):
        return False
    return any(a.get("status") == "failed" for a in doc.get("artifacts", []))


def api(fn) -> tuple[str, object]:
    from edgelift.errors import EdgeError

    try:
        fn()
    except EdgeError as e:
        return "edge-error", str(e)
    return "returned", None


def _random_run(path: Path, **options) -> None:
    import edgelift
    from edgelift.core.tensors import random_input_set

    with edgelift.load(path, **options) as m:
        first = m.inputs[0].shape[0] if m.inputs and m.inputs[0].shape else None
        feeds = random_input_set(m.inputs, first if isinstance(first, int) else 1,
                                 example_shapes=getattr(m.session, "built_shapes", None)).arrays  # as edge run does
        m.run(feeds)


def _mil_run(path: Path) -> None:
    from edgelift.converters.coreml.executor import MILReferenceSession
    from edgelift.core.tensors import random_input_set

    s = MILReferenceSession(path)
    s.run(random_input_set(s.inputs, 1).arrays)


def _gguf_tokens(path: Path, backend: str, **options) -> None:
    import edgelift

    with edgelift.load(path, backend=backend, n_ctx=64, **options) as m:
        m.run({"tokens": np.array([1, 5, 9], np.int32) % m.outputs[0].shape[1]})


def _stream(path: Path, workdir: Path) -> None:
    """A device's --stream-results output replayed through the SSH client's reader, then shown and saved."""
    from edgelift.cli import print_profile
    from edgelift.profilers.report import ProfileReport
    from edgelift.profilers.targets.stream import run_streaming

    model = seeds() / "digits.onnx"
    doc = run_streaming(["cat", str(path)], "ssh://fuzz@device", model, {"hostname": "device"}, None)
    print_profile(doc)
    rep = ProfileReport(doc)
    rep.write_json(workdir / "r.json")
    rep.write_markdown(workdir / "r.md")
    rep.write_html(workdir / "r.html")


def _factory(path: Path) -> None:
    import torch

    from edgelift.converters.sources import resolve_source

    resolve_source("examples.digits.model:build_model", weights=path, example_inputs=(torch.zeros(1, 1, 8, 8),))


def _read_npz(path: Path) -> None:
    from edgelift.converters.onnx_graph import input_specs, load_model
    from edgelift.core.tensors import load_input_set

    load_input_set(path, input_specs(load_model(seeds() / "digits.onnx")))


def _load_pt2(path: Path) -> None:
    from edgelift.converters.sources import load_pt2

    load_pt2(path)


ENTRIES = {
    "onnx": {
        "cli-inspect": lambda p, w: cli("inspect", p),
        "cli-run": lambda p, w: cli("run", p, "--random"),
        "cli-plan": lambda p, w: cli("plan", p),
        "api-load-budget": lambda p, w: api(lambda: _random_run(p, memory_budget="16KB")),
        "cli-convert": lambda p, w: cli_writing(w / "out", "convert", p, "-q", "none"),
    },
    "tflite": {
        "cli-inspect": lambda p, w: cli("inspect", p),
        "cli-run": lambda p, w: cli("run", p, "--random"),
        "api-load-run": lambda p, w: api(lambda: _random_run(p)),
    },
    "coreml": {
        "cli-inspect": lambda p, w: cli("inspect", p),
        "api-mil-run": lambda p, w: api(lambda: _mil_run(p)),
    },
    "gguf": {
        "cli-inspect": lambda p, w: cli("inspect", p),
        "cli-run-llama.cpp": lambda p, w: cli("run", p, "--prompt", "hi", "-n", "2", "--backend", "llama.cpp"),
        "api-llama.cpp": lambda p, w: api(lambda: _gguf_tokens(p, "llama.cpp")),
        "cli-run-edge": lambda p, w: cli("run", p, "--prompt", "hi", "-n", "2", "--backend", "edge"),
        "api-edge-budget": lambda p, w: api(lambda: _gguf_tokens(p, "edge", memory_budget="200KB")),
    },
    "pt2": {
        "cli-inspect": lambda p, w: cli("inspect", p),
        "api-load": lambda p, w: api(lambda: _load_pt2(p)),
        "cli-convert": lambda p, w: cli_writing(w / "out", "convert", p, "-q", "none"),
    },
    "npz": {
        "cli-run-input": lambda p, w: cli("run", seeds() / "digits.onnx", "--input", p),
        "api-input-set": lambda p, w: api(lambda: _read_npz(p)),
        "cli-convert-calibration": lambda p, w: cli_writing(w / "out", "convert", seeds() / "digits.onnx", "-q",
                                                            "int8", "--calibration", p),
    },
    "safetensors": {
        "api-factory": lambda p, w: api(lambda: _factory(p)),
        "cli-convert-factory": lambda p, w: cli_writing(w / "out", "convert", "examples.digits.model:build_model",
                                                        "--weights", p, "--input-shape", "x=1x1x8x8"),
    },
    "stream": {
        "api-remote-stream": lambda p, w: api(lambda: _stream(p, w)),
    },
    "report": {
        "cli-report": lambda p, w: cli("report", p, "--html", w / "c.html", "--markdown", w / "c.md"),
    },
}


def run(fmt: str, entry: str, path: Path, workdir: Path) -> tuple[str, object]:
    return ENTRIES[fmt][entry](path, workdir)
