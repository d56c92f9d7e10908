"""Self-contained HTML pages for ``edge profile`` reports: one profile, or several compared.

A report is read later, often on another machine, sometimes offline or printed, so a page carries
everything it needs: inline CSS and inline SVG (from :mod:`edgelift.profilers.svg`), no script,
font, image or stylesheet to fetch. Rendering is a pure function of the profile JSON document
(``schema: edgelift/profile``); any field may be missing or None and then reads "n/a" (or a sentence
saying why), never a misleading 0. Every string from the document is escaped.
"""

from __future__ import annotations

import html as _html
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.atomic import atomic_write_text
from ..core.units import format_bytes
from . import svg
from .svg import as_number as _num

NA = "n/a"
Doc = Mapping[str, Any]
TOP_OPS = 15  # bars in the per-op chart; the table lists every op type

CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
  color: #1d1d1f; background: #fff; margin: 0 auto; max-width: 1260px; padding: 24px; font-size: 14px;
  line-height: 1.45; }
h1 { font-size: 1.6em; margin: 0 0 4px; }
h2 { font-size: 1.25em; margin: 28px 0 8px; padding-bottom: 4px; border-bottom: 1px solid #d8d8d8; }
h3 { font-size: 1.05em; margin: 16px 0 6px; }
p { margin: 6px 0; }
.meta { color: #666; margin: 0; }
.muted { color: #777; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; margin: 4px 0 12px; }
th, td { padding: 3px 10px; border-bottom: 1px solid #ececec; text-align: left; vertical-align: top; }
thead th { background: #f4f4f6; border-bottom: 1px solid #c8c8c8; font-weight: 600; }
td.num, th.num { text-align: right; white-space: nowrap; }
table.kv th { font-weight: 500; color: #555; white-space: nowrap; }
table.kv td { overflow-wrap: anywhere; }
.grid > div { max-width: 100%; }
.na { color: #999; }
.badge { display: inline-block; padding: 0 6px; border-radius: 8px; font-size: 0.85em; font-weight: 600;
  background: #fde8d0; color: #8a4500; }
.front { color: #b71c1c; font-weight: 700; }
.banner { padding: 8px 12px; border-radius: 6px; margin: 10px 0; }
.banner.warn { background: #fff4e5; border: 1px solid #f0b45a; }
.banner.error { background: #fdecea; border: 1px solid #e57373; }
.pair { display: grid; grid-template-columns: repeat(auto-fit, minmax(380px, 1fr)); gap: 4px 28px; }
.grid { display: flex; flex-wrap: wrap; gap: 4px 48px; align-items: flex-start; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(560px, 1fr)); gap: 12px 20px;
  margin: 8px 0; }
figure { margin: 0; }
svg { max-width: 100%; height: auto; display: block; }
.wide { overflow-x: auto; }
ul.warnings { margin: 4px 0; padding-left: 20px; }
footer { color: #888; font-size: 12px; margin-top: 32px; border-top: 1px solid #eee; padding-top: 8px; }
@media print {
  body { max-width: none; padding: 0; font-size: 11px; }
  section.run, figure, table, .banner { break-inside: avoid; }
  h2 { break-after: avoid; }
  .wide { overflow: visible; }
  a { color: inherit; text-decoration: none; }
}
"""


class Markup(str):
    """HTML that is already safe (built here from escaped parts), so cells do not escape it again."""


def _e(v: Any) -> str:
    """Escape any value for HTML text or a quoted attribute; Markup passes through."""
    return v if isinstance(v, Markup) else _html.escape(str(v), quote=True)


def _get(d: Any, *keys: str) -> Any:
    """``d[k1][k2]...`` where any level may be missing or None."""
    for k in keys:
        if not isinstance(d, Mapping):
            return None
        d = d.get(k)
    return d


# ---------------------------------------------------------------- formatting


def fmt_ms(ns: Any) -> str:
    """A latency in nanoseconds as milliseconds (3 decimals, as the CLI prints it)."""
    v = _num(ns)
    return NA if v is None else f"{v / 1e6:,.3f} ms"


def fmt_duration(ns: Any) -> str:
    """A one-off time (model load, first inference): µs, ms or s by size."""
    v = _num(ns)
    if v is None:
        return NA
    if abs(v) >= 1e9:
        return f"{v / 1e9:,.2f} s"
    if abs(v) >= 1e6:
        return f"{v / 1e6:,.1f} ms"
    return f"{v / 1e3:,.1f} µs"


def fmt_bytes(n: Any) -> str:
    """Bytes in decimal units, as the rest of edgelift prints them."""
    v = _num(n)
    if v is None:
        return NA
    return format_bytes(v)


def fmt_watts(w: Any) -> str:
    v = _num(w)
    return NA if v is None else f"{v:.2f} W"


def fmt_joules(j: Any) -> str:
    """Energy in J, mJ or µJ, so per-inference figures keep their digits."""
    v = _num(j)
    if v is None:
        return NA
    if abs(v) >= 1 or v == 0:
        return f"{v:,.3f} J"
    if abs(v) >= 1e-3:
        return f"{v * 1e3:.3f} mJ"
    return f"{v * 1e6:.3f} µJ"


def fmt_rate(v: Any, unit: str = "/s") -> str:
    f = _num(v)
    return NA if f is None else f"{f:,.1f} {unit}"


def fmt_pct(frac: Any, digits: int = 1) -> str:
    """A fraction (0.03) as a percentage (3.0%)."""
    v = _num(frac)
    return NA if v is None else f"{100 * v:.{digits}f}%"


def fmt_text(v: Any) -> str:
    if v is None or v == "":
        return NA
    if isinstance(v, Mapping):
        return ", ".join(f"{k}={fmt_text(x)}" for k, x in v.items()) or NA
    if isinstance(v, (list, tuple)):
        return ", ".join(fmt_text(x) for x in v) or NA
    return str(v)


# ---------------------------------------------------------------- building blocks


def _td(v: Any, num: bool = False) -> str:
    cls = [c for c, on in (("num", num), ("na", v == NA)) if on]
    attr = f' class="{" ".join(cls)}"' if cls else ""
    return f"<td{attr}>{_e(v)}</td>"


def kv_table(rows: Sequence[tuple[str, Any]], *, caption: str | None = None, numeric: bool = True) -> str:
    """Two-column label/value table; values are escaped unless Markup, right-aligned if ``numeric``."""
    head = f"<h3>{_e(caption)}</h3>" if caption else ""
    body = "".join(f"<tr><th>{_e(k)}</th>{_td(v, numeric)}</tr>" for k, v in rows)
    return f'{head}<table class="kv"><tbody>{body}</tbody></table>'


def grid_table(header: Sequence[str], rows: Sequence[Sequence[Any]], *, numeric: Sequence[bool] | None = None) -> str:
    """A table with a header row; ``numeric`` right-aligns columns of numbers."""
    numeric = list(numeric or [False] * len(header))
    num_attr = ' class="num"'
    ths = "".join(f"<th{num_attr if n else ''}>{_e(h)}</th>" for h, n in zip(header, numeric))
    trs = "".join("<tr>" + "".join(_td(v, n) for v, n in zip(r, numeric)) + "</tr>" for r in rows)
    return f'<div class="wide"><table><thead><tr>{ths}</tr></thead><tbody>{trs}</tbody></table></div>'


def _figure(svg_text: str) -> str:
    return f"<figure>{svg_text}</figure>"


def _page(title: str, body: Sequence[str], generator: str) -> str:
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title>",
        f"<style>{CSS}</style>",
        "</head><body>",
        *body,
        f"<footer>{_e(generator)} · self-contained report: no scripts, no network.</footer>",
        "</body></html>",
        "",
    ])


def model_label(doc: Doc) -> str:
    """The name a reader knows the model by: its label, else its name, else the file name."""
    m = doc.get("model") or {}
    for v in (m.get("label"), m.get("name")):
        if v:
            return str(v)
    return os.path.basename(str(m.get("path") or "")) or "model"


def _warn_badge(stats: Any) -> Any:
    """The cv of a latency block, flagged when the profiler judged the figure unreliable."""
    cv = fmt_pct(_get(stats, "cv"))
    if _get(stats, "unreliable"):
        return Markup(f'{_e(cv)} <span class="badge">⚠ unreliable</span>')
    return cv


# ---------------------------------------------------------------- single report


def _header(doc: Doc) -> list[str]:
    meta = " · ".join(f"{k} {fmt_text(v)}" for k, v in (
        ("created", doc.get("created")), ("edgelift", doc.get("edgelift_version")),
        ("schema", f"{doc.get('schema') or NA} v{doc.get('schema_version') or NA}")))
    out = [f"<header><h1>Profile: {_e(model_label(doc))}</h1><p class=\"meta\">{_e(meta)}</p></header>"]
    if doc.get("partial"):
        out.append('<div class="banner error"><strong>Partial report.</strong> The profile was interrupted; '
                   "runs below may be missing or incomplete.</div>")
    return out


def _warnings(warnings: Sequence[Any] | None, title: str = "Warnings") -> list[str]:
    if not warnings:
        return []
    items = "".join(f"<li>{_e(w)}</li>" for w in warnings)
    return [f'<section><h2>{_e(title)}</h2><div class="banner warn"><ul class="warnings">{items}</ul></div>'
            "</section>"]


def _inputs(inputs: Any) -> str:
    if not inputs:
        return NA
    return "; ".join(f"{fmt_text(i.get('name'))} {fmt_text(i.get('shape'))} {fmt_text(i.get('dtype'))}"
                     if isinstance(i, Mapping) else fmt_text(i) for i in inputs)


def _temperatures(t: Any) -> str:
    if not isinstance(t, Mapping) or not t:
        return NA
    return ", ".join(f"{k} {v:.1f} °C" if _num(v) is not None else f"{k} {NA}" for k, v in t.items())


def _throttling(t: Any) -> str:
    if not isinstance(t, Mapping):
        return NA
    flags = t.get("flags") or []
    return f"{fmt_text(t.get('raw'))} ({', '.join(map(str, flags)) if flags else 'no flags'})"


def _identity(doc: Doc) -> list[str]:
    m, d = doc.get("model") or {}, doc.get("device") or {}
    model_rows = [("label", fmt_text(m.get("label"))), ("name", fmt_text(m.get("name"))),
                  ("path", fmt_text(m.get("path"))), ("format", fmt_text(m.get("format"))),
                  ("backend", fmt_text(m.get("backend"))), ("size on disk", fmt_bytes(m.get("size_bytes"))),
                  ("inputs", _inputs(m.get("inputs"))), ("accuracy", fmt_pct(m.get("accuracy"), 2))]
    device_rows = [("model", fmt_text(d.get("model"))), ("hostname", fmt_text(d.get("hostname"))),
                   ("SoC", fmt_text(d.get("soc"))), ("OS", fmt_text(d.get("os"))),
                   ("kernel", fmt_text(d.get("kernel"))), ("machine", fmt_text(d.get("machine"))),
                   ("Python", fmt_text(d.get("python"))), ("CPUs", fmt_text(d.get("cpu_count"))),
                   ("memory", fmt_bytes(d.get("memory_total_bytes"))),
                   ("CPU governor", fmt_text(d.get("cpu_governor"))),
                   ("temperatures", _temperatures(d.get("temperatures_c"))),
                   ("throttling", _throttling(d.get("throttling")))]
    if d.get("jetson_release"):
        device_rows.append(("Jetson release", fmt_text(d.get("jetson_release"))))
    return ['<section class="pair">', f"<div>{kv_table(model_rows, caption='Model', numeric=False)}</div>",
            f"<div>{kv_table(device_rows, caption='Device', numeric=False)}</div>", "</section>"]


def _peak_rss(run: Mapping[str, Any]) -> float | None:
    vals = [v for v in (_num(_get(run, "memory", k)) for k in ("peak_rss_load_bytes", "peak_rss_inference_bytes"))
            if v is not None]
    return max(vals) if vals else None


def _sweep_overview(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """With several settings (a sweep), one line each first, so the best setting is found at a glance."""
    if len(runs) < 2:
        return []
    rows = [[Markup(f'<a href="#run-{i}">{_e(fmt_text(r.get("label")))}</a>'),
             fmt_ms(_get(r, "latency", "median_ns")), fmt_ms(_get(r, "latency", "avg_ns")),
             fmt_ms(_get(r, "latency", "p99_ns")), _warn_badge(r.get("latency")),
             fmt_rate(_get(r, "latency", "throughput_per_s"), "items/s"), fmt_bytes(_peak_rss(r)),
             fmt_joules(_get(r, "power", "energy_per_inference_j")) if _get(r, "power", "available") else NA]
            for i, r in enumerate(runs)]
    table = grid_table(["setting", "median", "mean", "p99", "cv", "throughput", "peak RSS", "energy / inference"],
                       rows, numeric=[False] + [True] * 7)
    labels = [fmt_text(r.get("label")) for r in runs]
    medians = [(_num(_get(r, "latency", "median_ns")) or float("nan")) / 1e6 for r in runs]
    chart = svg.hbar_svg(labels, medians, title="median latency per setting", x_label="ms")
    return [f"<section><h2>Sweep overview</h2>{table}{_figure(chart)}</section>"]


def _latency_table(run: Mapping[str, Any]) -> str:
    lat, e2e = run.get("latency"), run.get("end_to_end")
    blocks = [lat] + ([e2e] if isinstance(e2e, Mapping) else [])
    unit = "token" if run.get("latency_unit") == "token" else "inference"
    header = ["", f"per {unit}"] + (["end to end"] if len(blocks) > 1 else [])
    rows: list[list[Any]] = []
    for name, key in (("median", "median_ns"), ("mean", "avg_ns"), ("p90", "p90_ns"), ("p95", "p95_ns"),
                      ("p99", "p99_ns"), ("min", "min_ns"), ("max", "max_ns"), ("std", "stddev_ns")):
        rows.append([name] + [fmt_ms(_get(b, key)) for b in blocks])
    rows.append(["cv"] + [_warn_badge(b) for b in blocks])
    rows.append(["samples"] + [fmt_text(_get(b, "n_samples")) for b in blocks])
    rows.append(["throughput"] + [fmt_rate(_get(b, "throughput_per_s"), "tokens/s" if unit == "token" else "items/s")
                                   for b in blocks])
    return "<div><h3>Latency</h3>" + grid_table(header, rows, numeric=[False] + [True] * (len(header) - 1)) + "</div>"


def _time_memory_table(run: Mapping[str, Any], size_bytes: Any) -> str:
    mem = run.get("memory") or {}
    return "<div>" + kv_table([
        ("model load", fmt_duration(run.get("load_ns"))), ("first inference", fmt_duration(run.get("first_ns"))),
        ("size on disk", fmt_bytes(size_bytes)), ("RSS before load", fmt_bytes(mem.get("rss_before_load_bytes"))),
        ("peak RSS, load", fmt_bytes(mem.get("peak_rss_load_bytes"))),
        ("peak RSS, inference", fmt_bytes(mem.get("peak_rss_inference_bytes"))), *_budget_rows(mem.get("budget"))],
        caption="Load and memory") + "</div>"


def _budget_rows(budget: Any) -> list[tuple[str, str]]:
    """A memory budget's plan (patch-based inference): the budget, planned and measured peaks, extra compute."""
    if not isinstance(budget, Mapping):
        return []
    return [("memory budget", fmt_bytes(budget.get("budget_bytes"))),
            ("activation peak, planned", f"{fmt_bytes(budget.get('planned_peak_bytes'))} "
                                         f"(plain {fmt_bytes(budget.get('plain_peak_bytes'))})"),
            ("activation peak, measured", f"{fmt_bytes(budget.get('measured_peak_bytes'))} "
                                          f"(plain {fmt_bytes(budget.get('plain_measured_bytes'))})"),
            ("extra compute", fmt_text(f"x{budget.get('extra_compute', 1.0):.3f}" if budget.get("patched") else
                                       "none: the plain schedule fits"))]


def power_reason(power: Any) -> str:
    """Why there is no power figure, as a sentence for the reader."""
    reason = _get(power, "reason")
    return f"Power not measured: {reason}" if reason else "Power not measured: no power source on this device."


def _power_table(run: Mapping[str, Any]) -> str:
    p = run.get("power")
    if not _get(p, "available"):
        return f'<div><h3>Power</h3><p class="muted">{_e(power_reason(p))}</p></div>'
    rows = [("source", fmt_text(p.get("source"))), ("sampling", fmt_rate(p.get("rate_hz"), "Hz")),
            ("idle", fmt_watts(p.get("idle_w"))), ("average", fmt_watts(p.get("avg_w"))),
            ("peak", fmt_watts(p.get("peak_w"))), ("energy", fmt_joules(p.get("energy_j"))),
            ("energy above idle", fmt_joules(p.get("energy_above_idle_j"))),
            ("energy / inference", fmt_joules(p.get("energy_per_inference_j"))),
            ("energy / inference above idle", fmt_joules(p.get("energy_per_inference_above_idle_j")))]
    if run.get("llm") or p.get("energy_per_token_j") is not None:
        rows += [("energy / token", fmt_joules(p.get("energy_per_token_j"))),
                 ("energy / token above idle", fmt_joules(p.get("energy_per_token_above_idle_j")))]
    note = f'<p class="muted">{_e(p["description"])}</p>' if p.get("description") else ""
    return "<div>" + kv_table(rows, caption="Power") + note + "</div>"


def _latency_charts(run: Mapping[str, Any]) -> list[str]:
    lat = run.get("latency") or {}
    samples = [v for v in (_num(s) for s in lat.get("samples_ns") or [])]
    ms = [None if v is None else v / 1e6 for v in samples]
    markers = {k: v / 1e6 for k, v in (("median", _num(lat.get("median_ns"))), ("p99", _num(lat.get("p99_ns"))))
               if v is not None}
    hist = svg.histogram_svg([v for v in ms if v is not None], title="latency distribution", x_label="ms",
                             markers=markers)
    t = lat.get("t_offsets_s") or []
    if len(t) == len(ms) and ms:
        xs, x_label = list(t), "time since the first sample (s)"
    else:
        xs, x_label = list(range(len(ms))), "sample"
    over_time = svg.line_svg({"latency": (xs, ms)}, title="latency over time", x_label=x_label, y_label="ms",
                             hlines={"median": markers["median"]} if "median" in markers else None)
    return [f'<div class="charts">{_figure(hist)}{_figure(over_time)}</div>']


def _power_chart(run: Mapping[str, Any]) -> list[str]:
    p = run.get("power")
    tl = _get(p, "timeline")
    if not _get(p, "available") or not isinstance(tl, Mapping) or not tl.get("t_s"):
        return []
    t, w, phase = list(tl.get("t_s") or []), list(tl.get("w") or []), list(tl.get("phase") or [])
    if len(phase) == len(t):
        series = {"idle phase": (t, [v if ph == "idle" else None for v, ph in zip(w, phase)]),
                  "measured phase": (t, [v if ph != "idle" else None for v, ph in zip(w, phase)])}
    else:
        series = {"power": (t, w)}
    idle = _num(p.get("idle_w"))
    chart = svg.line_svg(series, title=f"power ({fmt_text(p.get('source'))})", x_label="time (s)", y_label="W",
                         hlines={"idle": idle} if idle is not None else None, y_from_zero=True, width=1200,
                         height=300)
    return [_figure(chart), *_timeline_extras(t, tl)]


# Source metrics drawn under the power curve, by chart: (title, y label, metric names).
TIMELINE_METRIC_CHARTS = (("GPU and memory-controller load", "%", ("gpu_load_pct", "emc_load_pct")),
                          ("RAM", "MB", ("ram_used_mb", "lfb_mb")))


def _timeline_extras(t: list, tl: Mapping[str, Any]) -> list[str]:
    """Per-rail power (when there is more than one rail) and the source's metrics (tegrastats' GPU and
    EMC load, RAM) on the power chart's time axis, so a GPU that idles while power rises shows."""
    out = []
    rails = {k: v for k, v in (tl.get("rails") or {}).items() if isinstance(v, list) and len(v) == len(t)}
    if len(rails) > 1:
        out.append(_figure(svg.line_svg({k: (t, v) for k, v in rails.items()}, title="power per rail",
                                        x_label="time (s)", y_label="W", y_from_zero=True, width=1200, height=300)))
    metrics = tl.get("metrics") or {}
    for title, unit, names in TIMELINE_METRIC_CHARTS:
        series = {n: (t, metrics[n]) for n in names if isinstance(metrics.get(n), list) and len(metrics[n]) == len(t)}
        if series:
            out.append(_figure(svg.line_svg(series, title=title, x_label="time (s)", y_label=unit, y_from_zero=True,
                                            width=1200, height=240)))
    return out


def _ops(run: Mapping[str, Any]) -> list[str]:
    ops = run.get("ops")
    if not isinstance(ops, Mapping):
        reason = run.get("ops_unavailable")
        return [f'<h3>Per-op profile</h3><p class="muted">{_e(reason or "Per-op profile not recorded for this run.")}'
                "</p>"] if reason else []
    by_type = [o for o in ops.get("by_type") or [] if isinstance(o, Mapping)]
    out = [f'<h3>Per-op profile <span class="muted">({_e(fmt_text(ops.get("source")))})</span></h3>']
    top = by_type[:TOP_OPS]
    out.append(_figure(svg.hbar_svg([fmt_text(o.get("op_type")) for o in top], [o.get("avg_ms") for o in top],
                                    title=f"time per op type (top {len(top)})", x_label="ms per inference")))
    out.append(grid_table(["op type", "avg / inference", "share", "cumulative", "calls"],
                          [[fmt_text(o.get("op_type")), _fmt_op_ms(o.get("avg_ms")), fmt_pct(_pct(o, "percent")),
                            fmt_pct(_pct(o, "cumulative_percent")), fmt_text(o.get("calls"))] for o in by_type],
                          numeric=[False, True, True, True, True]))
    nodes = [n for n in ops.get("top_nodes") or [] if isinstance(n, Mapping)]
    if nodes:
        out.append("<h3>Slowest nodes</h3>" + grid_table(
            ["node", "op type", "avg / inference", "share"],
            [[fmt_text(n.get("name")), fmt_text(n.get("op_type")), _fmt_op_ms(n.get("avg_ms")),
              fmt_pct(_pct(n, "percent"))] for n in nodes], numeric=[False, False, True, True]))
    return out


def _pct(d: Mapping[str, Any], key: str) -> float | None:
    """Per-op shares are stored as percentages (12.5), fmt_pct takes fractions."""
    v = _num(d.get(key))
    return None if v is None else v / 100


def _fmt_op_ms(v: Any) -> str:
    f = _num(v)
    return NA if f is None else f"{f:,.3f} ms"


def _llm(run: Mapping[str, Any]) -> list[str]:
    llm = run.get("llm")
    if not isinstance(llm, Mapping):
        return []

    def pm(avg: str, sd: str) -> str:
        a, s = _num(llm.get(avg)), _num(llm.get(sd))
        return NA if a is None else f"{a:,.1f} ± {s:,.1f} tokens/s" if s is not None else f"{a:,.1f} tokens/s"

    def ms(key: str) -> str:
        v = _num(llm.get(key))
        return NA if v is None else f"{v:,.1f} ms"

    rows = [("prompt tokens", fmt_text(llm.get("n_prompt"))), ("generated tokens", fmt_text(llm.get("n_gen"))),
            ("time to first token", ms("ttft_ms")), ("prompt processing", pm("pp_avg_ts", "pp_stddev_ts")),
            ("generation", pm("tg_avg_ts", "tg_stddev_ts")), ("time per output token", ms("tpot_ms"))]
    tables = [kv_table(rows, caption="Language model")]
    rpc = llm.get("rpc")
    if isinstance(rpc, Mapping) and isinstance(rpc.get("devices"), Sequence):
        devices = [d for d in rpc["devices"] if isinstance(d, Mapping)]
        tables.append(kv_table(
            [(fmt_text(d.get("endpoint")), f"{fmt_bytes(d.get('allocated_bytes'))} allocated of "
                                           f"{fmt_bytes(d.get('memory_bytes'))} given; server resident "
                                           f"{fmt_bytes(d.get('server_rss_bytes'))}, peak "
                                           f"{fmt_bytes(d.get('server_peak_rss_bytes'))}") for d in devices]
            + [("network while decoding", f"{fmt_bytes(_num(rpc.get('network_bytes_per_token')))} per token")],
            caption="RPC devices (llama.cpp's buffers on each: weights, KV cache, compute; the server process's own memory)", numeric=False))
    return tables


def _run_section(i: int, run: Mapping[str, Any], doc: Doc) -> str:
    label = fmt_text(run.get("label")) if run.get("label") else f"run {i + 1}"
    params = run.get("params")
    parts = [f'<section class="run" id="run-{i}"><h2>Run: {_e(label)}</h2>']
    if isinstance(params, Mapping) and params:
        parts.append(f'<p class="meta">{_e(fmt_text(params))}</p>')
    for name, block in (("Latency", run.get("latency")), ("End-to-end latency", run.get("end_to_end"))):
        if _get(block, "unreliable"):
            parts.append(f'<div class="banner warn"><strong>⚠ {_e(name)} results are unreliable:</strong> '
                         f"coefficient of variation {_e(fmt_pct(_get(block, 'cv')))} (std / mean). The device was "
                         "busy, throttling or changing clock speed; trust the median and the histogram over the "
                         "mean, or rerun on an idle device.</div>")
    size = _get(doc, "model", "size_bytes")
    llm = "".join(f"<div>{t}</div>" for t in _llm(run))
    parts.append(f'<div class="grid">{_latency_table(run)}{_time_memory_table(run, size)}'
                 f"{_power_table(run)}{llm}</div>")
    parts += _latency_charts(run)
    parts += _power_chart(run)
    parts += _ops(run)
    parts.append("</section>")
    return "\n".join(parts)


def render_profile_html(doc: Doc) -> str:
    """The report page of one profile document: identity, summary per run, charts, ops, warnings."""
    runs = [r for r in doc.get("runs") or [] if isinstance(r, Mapping)]
    body = _header(doc) + _warnings(doc.get("warnings")) + _identity(doc) + _sweep_overview(runs)
    if not runs:
        body.append('<section><h2>Runs</h2><p class="muted">No runs were recorded.</p></section>')
    body += [_run_section(i, r, doc) for i, r in enumerate(runs)]
    return _page(f"edge profile: {model_label(doc)}", body, f"edgelift {fmt_text(doc.get('edgelift_version'))}")


# ---------------------------------------------------------------- comparison


@dataclass(frozen=True)
class Metric:
    """A quantity a comparison can plot: how to read it from a row and which direction is better."""

    title: str
    get: Callable[[dict[str, Any]], float | None]
    maximize: bool = False


def _scaled(key: str, factor: float) -> Callable[[dict[str, Any]], float | None]:
    def get(row: dict[str, Any]) -> float | None:
        v = _num(row.get(key))
        return None if v is None else v * factor
    return get


METRICS: dict[str, Metric] = {
    "latency": Metric("mean latency (ms)", _scaled("mean_ns", 1e-6)),
    "p99": Metric("p99 latency (ms)", _scaled("p99_ns", 1e-6)),
    "size": Metric("size on disk (MB)", _scaled("size_bytes", 1e-6)),
    "rss": Metric("peak RSS (MB)", _scaled("peak_rss_bytes", 1e-6)),
    "energy": Metric("energy per inference (mJ)", _scaled("energy_j", 1e3)),
    "accuracy": Metric("accuracy (%)", _scaled("accuracy", 100.0), maximize=True),
    "throughput": Metric("throughput (items/s)", _scaled("throughput", 1.0), maximize=True),
}


def comparison_rows(docs: Sequence[Doc]) -> list[dict[str, Any]]:
    """One flat row per (document, run): the figures a comparison shows, None where unknown."""
    rows = []
    for doc in docs:
        m, d = doc.get("model") or {}, doc.get("device") or {}
        runs = [r for r in doc.get("runs") or [] if isinstance(r, Mapping)] or [{}]
        for run in runs:
            label = model_label(doc)
            if len(runs) > 1 and run.get("label"):
                label = f"{label} · {run['label']}"
            power = run.get("power")
            rows.append({
                "label": label, "format": m.get("format"), "backend": m.get("backend"),
                "device": d.get("model") or d.get("hostname"), "run": run.get("label"),
                "median_ns": _get(run, "latency", "median_ns"),
                "mean_ns": _get(run, "latency", "avg_ns"), "p99_ns": _get(run, "latency", "p99_ns"),
                "unreliable": bool(_get(run, "latency", "unreliable")),
                "throughput": _get(run, "latency", "throughput_per_s"), "size_bytes": m.get("size_bytes"),
                "peak_rss_bytes": _peak_rss(run),
                "energy_j": _get(power, "energy_per_inference_j") if _get(power, "available") else None,
                "accuracy": m.get("accuracy"), "partial": bool(doc.get("partial")),
            })
    return rows


def _pick_metrics(rows: list[dict[str, Any]], pareto_x: str, pareto_y: str | None) -> tuple[str, str]:
    """The axes: x must be something to minimize; y defaults to accuracy when every row has one."""
    if pareto_y is None:
        pareto_y = "accuracy" if rows and all(_num(r["accuracy"]) is not None for r in rows) else "size"
    for name in (pareto_x, pareto_y):
        if name not in METRICS:
            raise ValueError(f"unknown Pareto metric {name!r}; choose from {', '.join(METRICS)}")
    if METRICS[pareto_x].maximize:
        raise ValueError(f"pareto_x={pareto_x!r} is a higher-is-better metric; put it on the y axis")
    if pareto_x == pareto_y:
        raise ValueError(f"pareto_x and pareto_y are both {pareto_x!r}")
    return pareto_x, pareto_y


def _comparison_table(rows: list[dict[str, Any]], front: set[int]) -> str:
    header = ["", "model", "format", "backend", "device", "median", "mean", "p99", "throughput", "size on disk",
              "peak RSS", "energy / inference", "accuracy"]
    body = []
    for i, r in enumerate(rows):
        median, mean = fmt_ms(r.get("median_ns")), fmt_ms(r["mean_ns"])
        if r["unreliable"]:
            mean = Markup(f'{_e(mean)} <span class="badge">⚠ unreliable</span>')
        star = Markup('<span class="front">★</span>') if i in front else ""
        body.append([star, r["label"] + (" (partial)" if r["partial"] else ""), fmt_text(r["format"]),
                     fmt_text(r["backend"]), fmt_text(r["device"]), median, mean, fmt_ms(r["p99_ns"]),
                     fmt_rate(r["throughput"], "items/s"), fmt_bytes(r["size_bytes"]), fmt_bytes(r["peak_rss_bytes"]),
                     fmt_joules(r["energy_j"]), fmt_pct(r["accuracy"], 2)])
    return grid_table(header, body, numeric=[False] * 5 + [True] * 8)


def render_comparison_html(docs: Sequence[Doc], *, pareto_x: str = "latency", pareto_y: str | None = None,
                           failures: Sequence[tuple[str, str]] = ()) -> str:
    """One page comparing profiles: a row per (model, setting), a Pareto plot and the mean latencies.

    ``pareto_x`` is minimized (latency, p99, size, rss, energy); ``pareto_y`` defaults to accuracy
    when every document has one, else size on disk; accuracy and throughput are maximized, the rest
    minimized. Rows missing either value are left off the plot, and the page says how many.
    ``failures``: (device, error) of devices in a fleet run that gave no profile, listed as failed.
    """
    rows = comparison_rows(docs)
    px, py = _pick_metrics(rows, pareto_x, pareto_y)
    mx, my = METRICS[px], METRICS[py]
    points = [{"x": mx.get(r), "y": my.get(r), "label": r["label"], "row": i} for i, r in enumerate(rows)]
    plotted = [p for p in points if p["x"] is not None and p["y"] is not None]
    front = {int(p["row"]) for p in svg.pareto_front(plotted, minimize_y=not my.maximize)}
    title = f"Comparison of {len(docs)} profile{'s' if len(docs) != 1 else ''}"
    body = [f'<header><h1>{_e(title)}</h1><p class="meta">{len(rows)} rows · ★ marks the Pareto front of '
            f"{_e(mx.title)} against {_e(my.title)}</p></header>"]
    if any(r["partial"] for r in rows):
        body.append('<div class="banner error"><strong>Partial data.</strong> Some profiles were interrupted.</div>')
    if failures:
        items = "".join(f"<li><strong>{_e(name)}</strong>: {_e(err)}</li>" for name, err in failures)
        body.append(f'<div class="banner error"><strong>{len(failures)} device{"s" if len(failures) != 1 else ""} '
                    f"failed.</strong><ul>{items}</ul></div>")
    body.append(f"<section><h2>Summary</h2>{_comparison_table(rows, front)}</section>")
    scatter = svg.scatter_svg(plotted, title=f"{my.title} vs {mx.title}", x_label=mx.title, y_label=my.title,
                              pareto=True, minimize_y=not my.maximize)
    note = ""
    if len(plotted) < len(points):
        missing = len(points) - len(plotted)
        note = f'<p class="muted">{missing} row{"s" if missing != 1 else ""} without both values not plotted.</p>'
    bars = svg.hbar_svg([r["label"] for r in rows], [METRICS["latency"].get(r) for r in rows], title="mean latency",
                        x_label="ms")
    body.append(f'<section><h2>Trade-offs</h2><div class="charts">{_figure(scatter)}{_figure(bars)}</div>{note}'
                "</section>")
    for doc in docs:
        body += _warnings(doc.get("warnings"), f"Warnings: {model_label(doc)}")
    versions = sorted({fmt_text(d.get("edgelift_version")) for d in docs})
    return _page(title, body, f"edgelift {', '.join(versions) or NA}")


def write_html(path: str | Path, html: str) -> Path:
    """Write a page through a temp file and a rename, so a reader never opens half a report."""
    return atomic_write_text(path, html)
