"""Profile reports: the versioned JSON document, and the Markdown and HTML views of one or many.

The JSON is the source of truth (``schemas/profile.schema.json``); Markdown and HTML are rendered
from it, so ``edge report`` can compare runs made on other devices from their JSON files alone.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..core.atomic import atomic_write_text
from ..core.units import format_bytes
from ..errors import ModelFormatError

SCHEMA = "edgelift/profile"
SCHEMA_VERSION = 1  # bump on any incompatible change to the document
SCHEMA_FILE = Path(__file__).resolve().parent.parent / "schemas" / "profile.schema.json"


class ProfileReport:
    """One profile (``doc``: the JSON document) with its writers."""

    def __init__(self, doc: dict) -> None:
        self.doc = doc

    @property
    def runs(self) -> list[dict]:
        return self.doc["runs"]

    def to_json(self) -> str:
        return json.dumps(self.doc, indent=1) + "\n"

    def write_json(self, path: str | Path) -> Path:
        return atomic_write_text(Path(path), self.to_json())

    def to_markdown(self) -> str:
        return profile_markdown(self.doc)

    def write_markdown(self, path: str | Path) -> Path:
        return atomic_write_text(Path(path), self.to_markdown())

    def write_html(self, path: str | Path) -> Path:
        from .html import render_profile_html

        return atomic_write_text(Path(path), render_profile_html(self.doc))


def profile_schema() -> dict:
    """The JSON schema every profile document follows (``schemas/profile.schema.json``)."""
    global _SCHEMA
    if _SCHEMA is None:
        _SCHEMA = json.loads(SCHEMA_FILE.read_text())
    return _SCHEMA


_SCHEMA: dict | None = None


def load_report(path: str | Path) -> dict:
    """A profile JSON written by ``edge profile --json``, checked against its schema before use."""
    from ..core.json_schema import SchemaViolation, loads, validate

    p = Path(path)
    try:
        doc = loads(p.read_bytes())
    except FileNotFoundError:
        raise ModelFormatError(f"{p}: no such report; write one with edge profile MODEL --json {p.name}") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ModelFormatError(f"{p} is not a profile report (not JSON: {e})") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ModelFormatError(f"{p} is not an edgelift profile report (no 'schema': '{SCHEMA}')")
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise ModelFormatError(f"{p} has profile schema version {doc.get('schema_version')}; "
                               f"this edgelift reads {SCHEMA_VERSION}")
    if not isinstance(doc.get("runs"), list) or not doc["runs"]:
        raise ModelFormatError(f"{p} has no runs")
    try:
        validate(doc, profile_schema())
    except SchemaViolation as e:
        raise ModelFormatError(f"{p} is not a valid profile report ({e}); write it again with edge profile --json") from e
    return doc


# ---- Markdown -------------------------------------------------------------------------------------------

def _ms(ns) -> str:
    return "n/a" if ns is None else f"{ns / 1e6:.3f}"


def _size(b) -> str:
    return "n/a" if b is None else format_bytes(b)


def _j(x) -> str:
    return "n/a" if x is None else (f"{x * 1e3:.3f} mJ" if abs(x) < 1 else f"{x:.3f} J")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(r) + " |" for r in rows)]


def profile_markdown(doc: dict) -> str:
    d, m = doc["device"], doc["model"]
    lines = [f"# {m['name']} on {d.get('model') or d.get('hostname') or 'this device'}", "",
             f"{m['format']} model, {format_bytes(m['size_bytes'])} on disk, backend {m['backend']}; "
             f"edgelift {doc['edgelift_version']}, {doc['created']}" + (" — **partial results**" if doc.get("partial") else ""),
             "", "## Device", ""]
    temps = ", ".join(f"{k} {v:.1f} °C" for k, v in (d.get("temperatures_c") or {}).items()) or "n/a"
    thr = d.get("throttling")
    lines += _table(["field", "value"], [
        ["model", str(d.get("model"))], ["SoC / CPU", str(d.get("soc"))], ["OS", f"{d.get('os')} ({d.get('kernel')})"],
        ["cores", str(d.get("cpu_count"))], ["memory", _size(d.get("memory_total_bytes"))],
        ["CPU governor", str(d.get("cpu_governor") or "n/a")], ["temperature", temps],
        ["throttling", "n/a" if not thr else (", ".join(thr.get("flags") or []) or "none") + f" ({thr.get('raw')})"],
        ["backends", ", ".join(f"{k} {v}" for k, v in (d.get("backends") or {}).items())]])
    lines += ["", "## Latency", ""]
    rows = []
    for r in doc["runs"]:
        lat, mem = r["latency"], r["memory"]
        loops = lat.get("loops_per_sample") or 1
        rows.append([r["label"], str(lat["n_samples"]) + (f" × {loops} calls" if loops > 1 else ""),
                     _ms(lat["median_ns"]), _ms(lat["avg_ns"]), _ms(lat["p90_ns"]),
                     _ms(lat["p95_ns"]), _ms(lat["p99_ns"]), _ms(lat["stddev_ns"]),
                     f"{lat['cv']:.1%}" + (" ⚠" if lat["unreliable"] else ""), f"{lat['throughput_per_s']:.1f}",
                     _ms(r["load_ns"]), _ms(r["first_ns"]), _size(mem["peak_rss_inference_bytes"])])
    unit = doc["runs"][0].get("latency_unit", "inference")
    lines += _table(["setting", "samples", "median ms", "mean", "p90", "p95", "p99", "std", "cv",
                     f"{unit}s/s", "load ms", "first ms", "peak RSS"], rows)
    budgets = [(r["label"], r["memory"]["budget"]) for r in doc["runs"] if (r.get("memory") or {}).get("budget")]
    if budgets:
        lines += ["", "## Memory budget (patch-based inference)", ""]
        lines += _table(["setting", "budget", "planned peak", "plain planned", "measured",
                         "plain measured", "extra compute"],
                        [[label, _size(b["budget_bytes"]), _size(b["planned_peak_bytes"]), _size(b["plain_peak_bytes"]),
                          _size(b.get("measured_peak_bytes")), _size(b.get("plain_measured_bytes")),
                          f"x{b.get('extra_compute', 1.0):.3f}"] for label, b in budgets])
    llm = [r for r in doc["runs"] if r.get("llm")]
    if llm:
        lines += ["", "## Language model (llama-bench style)", ""]
        lines += _table(["setting", "pp tok/s", "tg tok/s", "TTFT ms", "ms/token"], [
            [r["label"], f"{r['llm']['pp_avg_ts']:.1f} ± {r['llm']['pp_stddev_ts']:.1f}",
             f"{r['llm']['tg_avg_ts']:.1f} ± {r['llm']['tg_stddev_ts']:.1f}", f"{r['llm']['ttft_ms']:.1f}",
             f"{r['llm']['tpot_ms']:.2f}"] for r in llm])
        lines += ["", f"-p {llm[0]['llm']['n_prompt']} -n {llm[0]['llm']['n_gen']}, "
                      + (f"{llm[0]['llm']['repetitions']} repetitions" if llm[0]['llm']['repetitions'] is not None
                       else "repetitions not reported (llama-bench's table)")]
        for r in llm:
            rpc = r["llm"].get("rpc")
            if rpc:
                lines += ["", f"RPC devices ({r['label']}): {rpc['network_bytes_per_token'] / 1e3:.1f} kB/token on the "
                              "network while decoding", ""]
                lines += _table(["server", "layers", "memory given", "allocated", "weights", "KV cache", "compute",
                                 "server resident", "server peak"], [
                    [d["endpoint"], f"{100 * x:.0f}%", _size(d.get("memory_bytes")), _size(d.get("allocated_bytes")),
                     *(_size((d.get("buffers") or {}).get(k)) for k in ("model", "kv", "compute")),
                     _size(d.get("server_rss_bytes")), _size(d.get("server_peak_rss_bytes"))]
                    for d, x in zip(rpc["devices"], rpc["tensor_split"][-len(rpc["devices"]):])])
        for r in llm:
            w = r["llm"].get("weights")
            if w:
                budget = "no budget" if w["budget_bytes"] is None else f"budget {format_bytes(w['budget_bytes'])}"
                lines.append(f"- {r['label']}: weights {w['store']} ({budget}): peak resident "
                             f"{format_bytes(w['peak_resident_bytes'])}, read {format_bytes(w['bytes_read'])} from "
                             f"storage, I/O wait {w['io_wait_s']:.2f} s")
    lines += ["", "## Power and energy", ""]
    for r in doc["runs"]:
        p = r["power"]
        if not p.get("available"):
            lines.append(f"- {r['label']}: not measured — {p.get('reason')}")
            continue
        per_token = "" if p.get("energy_per_token_j") is None else \
            f", {_j(p['energy_per_token_j'])}/token ({_j(p['energy_per_token_above_idle_j'])} above idle)"
        lines.append(f"- {r['label']}: {p['source']} at {p['rate_hz']:g} Hz, {p['n_samples']} samples — idle "
                     f"{'n/a' if p['idle_w'] is None else format(p['idle_w'], '.2f')} W, average {p['avg_w']:.2f} W, peak {p['peak_w']:.2f} W; "
                     f"{_j(p['energy_per_inference_j'])} per inference ({_j(p['energy_per_inference_above_idle_j'])} "
                     f"above idle){per_token}")
        metrics = p.get("metrics") or {}
        if metrics:
            lines.append("  - during the measured runs: " + ", ".join(
                f"{name} mean {m['mean']:.1f}, max {m['max']:.1f}" for name, m in metrics.items()))
    for r in doc["runs"]:
        ops = r.get("ops")
        lines += ["", f"## Per-op time ({r['label']})", ""]
        if not ops:
            lines.append(f"n/a: {r.get('ops_unavailable')}")
            continue
        lines += _table(["op type", "profiled ms", "share of median ms", "%", "cumulative %", "times called"], [
            [o["op_type"], f"{o['avg_ms']:.4f}", "n/a" if o.get("scaled_ms") is None else f"{o['scaled_ms']:.4f}",
             f"{o['percent']:.1f}", f"{o['cumulative_percent']:.1f}", f"{o['calls']:g}"] for o in ops["by_type"]])
        if ops.get("sum_over_measured") is not None:
            lines += ["", f"Profiled node times add up to {ops['sum_ms']:.3f} ms per run, {ops['sum_over_measured']:.2f}x "
                          f"the measured median ({ops['measured_median_ms']:.3f} ms): the per-op pass is a separate, "
                          "instrumented run. \"Share of median\" spreads the measured median by each type's %."]
        if ops.get("providers"):
            lines += ["", "Placement (execution provider per node; with a GPU provider, CPU nodes are the fallbacks"
                          + ("" if ops.get("partitions") is None else f"; {ops['partitions']} partition(s)") + "):", ""]
            lines += _table(["provider", "nodes", "ms", "% of node time"], [
                [p["provider"], str(p["nodes"]), f"{p['avg_ms']:.4f}", f"{p['percent']:.1f}"] for p in ops["providers"]])
        lines += ["", f"Top {len(ops['top_nodes'])} nodes:", ""]
        lines += _table(["node", "op type", "avg ms", "%"], [
            [n["name"], n["op_type"], f"{n['avg_ms']:.4f}", f"{n['percent']:.1f}"] for n in ops["top_nodes"]])
    if doc.get("warnings"):
        lines += ["", "## Warnings", "", *(f"- {w}" for w in doc["warnings"])]
    return "\n".join(lines) + "\n"


def comparison_markdown(docs: list[dict], failures: list[tuple[str, str]] = ()) -> str:
    from .html import comparison_rows

    rows = comparison_rows(docs)
    lines = ["# Profile comparison", ""]
    lines += _table(["model", "format", "backend", "device", "median ms", "mean ms", "p99 ms", "per s", "size",
                     "peak RSS", "energy/inference", "accuracy"], [
        [r["label"] + (" (partial)" if r["partial"] else ""), r["format"], r["backend"], str(r["device"]),
         _ms(r.get("median_ns")), _ms(r["mean_ns"]), _ms(r["p99_ns"]), "n/a" if r["throughput"] is None else f"{r['throughput']:.1f}",
         "n/a" if r["size_bytes"] is None else format_bytes(r["size_bytes"]),
         "n/a" if r["peak_rss_bytes"] is None else format_bytes(r["peak_rss_bytes"]), _j(r["energy_j"]),
         "n/a" if r["accuracy"] is None else f"{r['accuracy']:.4f}"] for r in rows])
    if failures:
        lines += ["", "## Failed devices", "", *(f"- **{name}**: {err}" for name, err in failures)]
    return "\n".join(lines) + "\n"


CSV_COLUMNS = ("model", "format", "backend", "setting", "threads", "batch", "n_prompt", "n_gen", "n_samples",
               "loops_per_sample", "median_ns", "avg_ns", "stddev_ns", "p90_ns", "p99_ns", "cv", "avg_ts",
               "pp_avg_ts", "pp_stddev_ts", "tg_avg_ts", "tg_stddev_ts", "load_ns", "peak_rss_bytes",
               "energy_per_inference_j")


def profile_csv(doc: dict) -> str:
    """One row per measured setting, as llama-bench's ``-o csv``: machine-readable, numbers in base units."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    m = doc["model"]
    for r in doc["runs"]:
        lat, llm, params = r.get("latency") or {}, r.get("llm") or {}, r.get("params") or {}
        row = {"model": m.get("label") or m.get("name"), "format": m.get("format"), "backend": r.get("backend"),
               "setting": r.get("label"), "threads": params.get("threads"), "batch": params.get("batch"),
               "n_prompt": llm.get("n_prompt"), "n_gen": llm.get("n_gen"),
               "load_ns": r.get("load_ns"), "peak_rss_bytes": (r.get("memory") or {}).get("peak_rss_inference_bytes"),
               "energy_per_inference_j": (r.get("power") or {}).get("energy_per_inference_j")}
        row.update({k: lat.get(k) for k in ("n_samples", "loops_per_sample", "median_ns", "avg_ns", "stddev_ns",
                                            "p90_ns", "p99_ns", "cv", "avg_ts")})
        row.update({k: llm.get(k) for k in ("pp_avg_ts", "pp_stddev_ts", "tg_avg_ts", "tg_stddev_ts")})
        w.writerow(["" if row.get(c) is None else row[c] for c in CSV_COLUMNS])
    return buf.getvalue()
