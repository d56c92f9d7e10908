"""HTML profile reports: the right figures, escaped, self-contained, and they render.

The documents are synthetic with known numbers, so a wrong field, unit or format shows up as a
missing string. Rendering goes through headless Chromium (no network) to a PNG that the test
decodes itself (no Pillow on a device) to check that the charts drew something.
"""

from __future__ import annotations

import copy
import re
import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
import zlib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from edgelift.profilers.html import render_comparison_html, render_profile_html, write_html
from edgelift.profilers.svg import (empty_svg, histogram_svg, hbar_svg, line_svg, nice_ticks, pareto_front,
                                    scatter_svg)

EVIL = "<script>alert(1)</script>.onnx"
UNRELIABLE = "Latency results are unreliable"
POWER_REASON = "no power source found (looked for: rapl, hwmon, ina3221)"


# ---------------------------------------------------------------- synthetic documents


def _samples(n: int = 240) -> tuple[list[int], list[float]]:
    """About 2 ms with a deterministic wobble and a slow run every 40: a histogram with a tail."""
    ns = [2_000_000 + (i * 7919 % 200) * 1_000 + (600_000 if i % 40 == 39 else 0) for i in range(n)]
    t = [round(i * 0.0021, 6) for i in range(n)]
    return ns, t


def _timeline() -> dict[str, list[Any]]:
    """2 s idle at ~2.1 W, then 10 s measured at ~4.6 W, sampled at 10 Hz."""
    t = [round(i * 0.1, 3) for i in range(120)]
    w = [2.1 + (i % 3) * 0.02 if i < 20 else 4.5 + (i % 5) * 0.05 for i in range(120)]
    return {"t_s": t, "w": w, "phase": ["idle" if i < 20 else "measured" for i in range(120)]}


def make_doc(**model: Any) -> dict[str, Any]:
    ns, t = _samples()
    latency = {"n_samples": len(ns), "avg_ns": 2_412_345.0, "stddev_ns": 121_000.0, "min_ns": 2_000_000,
               "median_ns": 2_345_678.0, "p90_ns": 2_580_000.0, "p95_ns": 2_610_000.0, "p99_ns": 2_789_012.0,
               "max_ns": 2_799_000, "cv": 0.0502, "unreliable": False, "throughput_per_s": 414.5,
               "avg_ts": 414.5, "samples_ns": ns, "t_offsets_s": t}
    power = {"available": True, "source": "rapl", "description": "Intel RAPL package-0 energy counter",
             "rate_hz": 10, "reason": None, "idle_w": 2.1, "avg_w": 4.6, "peak_w": 4.7, "energy_j": 46.0,
             "energy_above_idle_j": 25.0, "energy_per_inference_j": 0.0111, "energy_per_inference_above_idle_j": 0.006,
             "energy_per_token_j": None, "energy_per_token_above_idle_j": None, "timeline": _timeline()}
    ops = {"source": "onnxruntime",
           "by_type": [{"op_type": "Conv", "avg_ms": 1.25, "percent": 55.0, "cumulative_percent": 55.0, "calls": 2},
                       {"op_type": "Gemm", "avg_ms": 0.6, "percent": 26.4, "cumulative_percent": 81.4, "calls": 1},
                       {"op_type": "Relu", "avg_ms": 0.25, "percent": 11.0, "cumulative_percent": 92.4, "calls": 3},
                       {"op_type": "MaxPool", "avg_ms": 0.17, "percent": 7.6, "cumulative_percent": 100.0,
                        "calls": 2}],
           "top_nodes": [{"name": "/features/features.0/conv_block_with_a_very_long_name/Conv", "op_type": "Conv",
                          "avg_ms": 0.8, "percent": 35.2}]}
    m = {"path": "/models/digits.int8.onnx", "name": "digits.int8", "format": "onnx", "backend": "onnxruntime",
         "size_bytes": 123_456, "inputs": [{"name": "x", "shape": [1, 1, 28, 28], "dtype": "float32"}],
         "accuracy": 0.9712, "label": "digits.int8.onnx"}
    m.update(model)
    return {
        "schema": "edgelift/profile", "schema_version": 1, "edgelift_version": "0.9.1",
        "created": "2026-11-24T12:00:00Z", "partial": False,
        "device": {"hostname": "pi5", "model": "Raspberry Pi 5 Model B Rev 1.0", "soc": "BCM2712",
                   "os": "Debian GNU/Linux 12", "kernel": "6.6.51", "machine": "aarch64", "python": "3.11.2",
                   "cpu_count": 4, "memory_total_bytes": 8_000_000_000, "cpu_governor": "ondemand",
                   "temperatures_c": {"cpu-thermal": 48.3}, "throttling": {"raw": "0x0", "flags": []},
                   "jetson_release": None},
        "model": m,
        "runs": [{"label": "threads=2 batch=1", "params": {"threads": 2, "batch": 1}, "load_ns": 12_300_000,
                  "first_ns": 4_560_000, "latency": latency, "end_to_end": None,
                  "memory": {"rss_before_load_bytes": 40_000_000, "peak_rss_load_bytes": 61_000_000,
                             "peak_rss_inference_bytes": 62_500_000},
                  "ops": ops, "ops_unavailable": None, "llm": None, "power": power}],
        "warnings": ["CPU governor is 'ondemand': <clocks> vary between runs"],
    }


def no_power(doc: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    for run in doc["runs"]:
        run["power"] = {"available": False, "reason": POWER_REASON}
    return doc


# ---------------------------------------------------------------- content


def test_profile_page_shows_the_figures():
    page = render_profile_html(make_doc())
    for text in ("digits.int8.onnx", "Raspberry Pi 5 Model B Rev 1.0", "onnxruntime",
                 "2.346 ms",  # median
                 "2.412 ms",  # mean
                 "2.789 ms",  # p99
                 "5.0%",  # cv
                 "414.5 items/s", "12.3 ms", "4.6 ms",  # throughput, load, first inference
                 "62.5 MB", "123.5 kB",  # peak RSS, size on disk (decimal units, core.units)
                 "2.10 W", "4.60 W", "11.100 mJ",  # idle, average, energy per inference
                 "97.12%", "cpu-thermal 48.3 °C", "Conv", "MaxPool", "55.0%",
                 "latency distribution", "latency over time", "power (rapl)", "time per op type"):
        assert text in page, text
    assert UNRELIABLE not in page and "⚠ unreliable" not in page
    assert "&lt;clocks&gt; vary" in page and "<clocks>" not in page  # warnings shown, escaped
    assert "Language model" not in page  # no llm block in a vision model's report


def test_unreliable_is_flagged_only_when_unreliable():
    doc = make_doc()
    doc["runs"][0]["latency"].update(cv=0.254, unreliable=True)
    page = render_profile_html(doc)
    assert UNRELIABLE in page and "25.4%" in page and "⚠ unreliable" in page
    assert UNRELIABLE not in render_profile_html(make_doc())


def test_user_strings_are_escaped():
    doc = make_doc(name=EVIL, label=EVIL, path=f"/tmp/{EVIL}")
    doc["device"]["hostname"] = '"><img src=x onerror=alert(2)>'
    doc["runs"][0]["label"] = "<b>bold</b>"
    for page in (render_profile_html(doc), render_comparison_html([doc, make_doc()])):
        assert "<script" not in page.lower()
        assert "<img" not in page and "<b>bold" not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;.onnx" in page


def test_missing_power_reads_as_a_reason_not_zero():
    doc = no_power(make_doc())
    mem = doc["runs"][0]["memory"]
    mem["peak_rss_inference_bytes"] = None
    del doc["runs"][0]["load_ns"]
    page = render_profile_html(doc)
    assert POWER_REASON in page
    assert "0.000 J" not in page and "0.00 W" not in page and " mJ" not in page
    assert "power (" not in page  # no timeline chart without a source
    assert re.search(r"model load</th><td[^>]*>n/a<", page)
    assert re.search(r"peak RSS, inference</th><td[^>]*>n/a<", page)
    bare = no_power(make_doc())
    bare["runs"][0]["power"] = {"available": False, "reason": None}
    assert "no power source on this device" in render_profile_html(bare)


def test_llm_ops_unavailable_and_sparse_documents():
    doc = make_doc(format="tflite", backend="litert")
    run = doc["runs"][0]
    run.update(ops=None, ops_unavailable="LiteRT's Python API has no op profiler",
               llm={"n_prompt": 128, "n_gen": 64, "ttft_ms": 85.25, "pp_avg_ts": 1501.2, "pp_stddev_ts": 12.3,
                    "tg_avg_ts": 22.4, "tg_stddev_ts": 0.8, "tpot_ms": 44.6})
    run["power"]["energy_per_token_j"] = 0.21
    page = render_profile_html(doc)
    for text in ("Language model", "85.2 ms", "1,501.2 ± 12.3 tokens/s", "22.4 ± 0.8 tokens/s", "44.6 ms",
                 "210.000 mJ", "LiteRT&#x27;s Python API has no op profiler"):
        assert text in page, text
    assert "per inference" in page and "per token" not in page
    run["latency_unit"] = "token"  # GGUF runs: the distribution is per generated token
    assert "per token" in render_profile_html(doc) and "tokens/s" in render_profile_html(doc)
    # a nearly empty document still renders, with n/a rather than numbers
    sparse = render_profile_html({"schema": "edgelift/profile", "runs": [{"label": "x", "latency": None}]})
    assert "n/a" in sparse and "0.000 ms" not in sparse
    assert "No runs were recorded" in render_profile_html({})


def test_sweep_gets_an_overview():
    doc = make_doc()
    second = copy.deepcopy(doc["runs"][0])
    second.update(label="threads=4 batch=1", params={"threads": 4, "batch": 1})
    second["latency"]["avg_ns"] = 1_234_567.0
    doc["runs"].append(second)
    page = render_profile_html(doc)
    assert "Sweep overview" in page and 'href="#run-1"' in page and 'id="run-1"' in page
    assert "1.235 ms" in page


def test_comparison_page():
    a = make_doc()
    b = make_doc(label="digits.fp32.onnx", accuracy=0.9801, size_bytes=480_000)
    b["runs"][0]["latency"]["avg_ns"] = 3_500_000.0  # slower, bigger, more accurate: also on the front
    c = no_power(make_doc(label="digits.fp16.onnx", accuracy=0.9700, size_bytes=250_000))
    c["runs"][0]["latency"]["avg_ns"] = 3_900_000.0  # slower and less accurate than b: dominated
    page = render_comparison_html([a, b, c])
    for text in ("digits.fp32.onnx", "digits.fp16.onnx", "3.500 ms", "98.01%", "480.0 kB", "11.100 mJ",
                 "accuracy (%) vs mean latency (ms)", "Raspberry Pi 5 Model B Rev 1.0"):
        assert text in page, text
    assert page.count('<span class="front">★</span>') == 2
    assert re.search(r"digits\.fp16\.onnx</td>(<td[^>]*>[^<]*</td>){9}<td class=\"num na\">n/a</td>", page)

    c["model"]["accuracy"] = None  # not every model has an accuracy: plot size instead
    page = render_comparison_html([a, b, c])
    assert "size on disk (MB) vs mean latency (ms)" in page
    with pytest.raises(ValueError):
        render_comparison_html([a, b], pareto_x="accuracy")


def test_write_html_is_atomic(tmp_path):
    out = write_html(tmp_path / "report.html", render_profile_html(make_doc()))
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


# ---------------------------------------------------------------- self-contained


class _Refs(HTMLParser):
    """Every src/href/xlink:href value, every CSS url(...), and the tags that could fetch something."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.tags: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self._in_style = tag == "style"
        for name, value in attrs:
            if name in ("src", "href", "xlink:href", "srcset", "action", "poster", "data") and value is not None:
                self.refs.append(value)
            if name == "style" and value:
                self.refs += re.findall(r"url\(\s*['\"]?([^'\")]*)", value)

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.refs += re.findall(r"url\(\s*['\"]?([^'\")]*)", data)
            assert "@import" not in data


@pytest.mark.parametrize("kind", ["profile", "comparison"])
def test_no_external_references(kind):
    docs = [make_doc(), make_doc(label="digits.fp32.onnx")]
    page = render_profile_html(docs[0]) if kind == "profile" else render_comparison_html(docs)
    parser = _Refs()
    parser.feed(page)
    for ref in parser.refs:
        scheme = re.match(r"\s*([a-zA-Z][a-zA-Z0-9+.-]*):", ref)
        assert scheme is None or scheme.group(1).lower() == "data", ref
    assert not {"script", "link", "img", "iframe", "object", "embed", "image", "use"} & set(parser.tags)
    assert "svg" in parser.tags
    lower = page.lower()
    assert "<script" not in lower and "<link" not in lower and "@import" not in lower
    # the only absolute URL is the SVG namespace, which is a name, never fetched
    assert set(re.findall(r"https?://[^\s\"'<>)]+", page)) == {"http://www.w3.org/2000/svg"}


# ---------------------------------------------------------------- SVG helpers


def test_pareto_front():
    pts = [{"x": 1.0, "y": 0.90, "label": "a"}, {"x": 2.0, "y": 0.95, "label": "b"},
           {"x": 2.5, "y": 0.93, "label": "c"}, {"x": 3.0, "y": 0.99, "label": "d"},
           {"x": 3.0, "y": 0.97, "label": "e"}, {"x": 4.0, "y": 0.99, "label": "f"},
           {"x": 0.5, "y": None, "label": "no-y"}]
    assert [p["label"] for p in pareto_front(pts)] == ["a", "b", "d"]
    # minimize both (latency vs energy): lower-left corner
    assert [p["label"] for p in pareto_front(pts, minimize_y=True)] == ["a"]
    both = [{"x": 1, "y": 5}, {"x": 2, "y": 3}, {"x": 3, "y": 4}, {"x": 4, "y": 1}, {"x": 4, "y": 1}]
    assert [(p["x"], p["y"]) for p in pareto_front(both, minimize_y=True)] == [(1, 5), (2, 3), (4, 1), (4, 1)]
    assert pareto_front([]) == []
    assert pareto_front([{"x": 1, "y": 1}, {"x": 1, "y": 1}]) == [{"x": 1, "y": 1}, {"x": 1, "y": 1}]
    assert pareto_front([{"x": 1, "y": 1}, {"x": 2, "y": 1}]) == [{"x": 1, "y": 1}]


def test_nice_ticks():
    assert nice_ticks(0.93, 1.71) == [0.8, 1.0, 1.2, 1.4, 1.6, 1.8]
    assert nice_ticks(0, 97, integer=True) == [0, 20, 40, 60, 80, 100]
    assert nice_ticks(0, 2, integer=True) == [0, 1, 2]
    const = nice_ticks(5.0, 5.0)
    assert const[0] < 5.0 < const[-1]
    assert len(nice_ticks(0.0, 0.0)) >= 2


@pytest.mark.parametrize("values", [[], [1.5], [2.0] * 10, [float("nan"), None, 3.0], [0.0, 0.0]])
def test_svg_charts_survive_degenerate_input(values):
    charts = [histogram_svg(values, title="h <1>", x_label="ms", markers={"median": values[0] if values else None}),
              line_svg({"s": (list(range(len(values))), values)}, title="l", x_label="x", y_label="y",
                       hlines={"idle": 1.0} if values else None),
              hbar_svg([f"op{i}" for i in range(len(values))], values, title="b", x_label="ms"),
              scatter_svg([{"x": v, "y": v, "label": f"<p{i}>"} for i, v in enumerate(values)], title="s",
                          x_label="x", y_label="y"),
              empty_svg("nothing")]
    for chart in charts:
        root = ET.fromstring(chart)  # well-formed XML, text escaped
        assert root.get("width") and root.get("height")
        assert not re.search(r"\b(nan|inf)\b", chart.lower())
        assert "<1>" not in chart and "<p0>" not in chart


# ---------------------------------------------------------------- rendering


def decode_png(data: bytes) -> tuple[int, int, int, bytes]:
    """(width, height, channels, pixels) of an 8-bit RGB/RGBA, non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, [], None
    while pos < len(data):
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if ctype == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif ctype == b"IDAT":
            idat.append(chunk)
        elif ctype == b"IEND":
            break
    assert header is not None, "no IHDR"
    width, height, depth, color, _, _, interlace = header
    assert depth == 8 and color in (2, 6) and interlace == 0, header
    channels = 3 if color == 2 else 4
    return width, height, channels, _unfilter(zlib.decompress(b"".join(idat)), width, height, channels)


def _unfilter(raw: bytes, width: int, height: int, bpp: int) -> bytes:
    """Undo the per-scanline filters (None, Sub, Up, Average, Paeth)."""
    stride = width * bpp
    out = bytearray(height * stride)
    prev = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        ftype, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        if ftype == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif ftype == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, prev))
        elif ftype == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif ftype == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b, c = prev[i], (prev[i - bpp] if i >= bpp else 0)
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        else:
            assert ftype == 0, f"bad filter {ftype}"
        out[y * stride:(y + 1) * stride] = line
        prev = line
    return bytes(out)


def test_png_decoder_round_trip():
    """The decoder against a PNG written here with every filter type, so a screenshot check means something."""
    w, h, bpp = 5, 5, 3
    pixels = bytes((x * 40 + y * 7 + c * 90) % 256 for y in range(h) for x in range(w) for c in range(bpp))
    rows = [pixels[y * w * bpp:(y + 1) * w * bpp] for y in range(h)]
    raw = bytearray()
    prev = bytes(w * bpp)
    for f, row in enumerate(rows):  # filter type = row index
        raw.append(f)
        for i, v in enumerate(row):
            a = row[i - bpp] if i >= bpp else 0
            b, c = prev[i], (prev[i - bpp] if i >= bpp else 0)
            p = a + b - c
            paeth = a if abs(p - a) <= abs(p - b) and abs(p - a) <= abs(p - c) else b if abs(p - b) <= abs(p - c) else c
            raw.append((v - (0, a, b, (a + b) >> 1, paeth)[f]) & 0xFF)
        prev = row

    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(bytes(raw))) + chunk(b"IEND", b""))
    assert decode_png(png) == (w, h, bpp, pixels)


def _screenshot(html_path: Path, png: Path, tmp_path: Path) -> None:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("chromium is not installed: cannot render the report")
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
           "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9",
           "--force-device-scale-factor=1", f"--user-data-dir={tmp_path / 'chromium-profile'}",
           f"--screenshot={png}", "--window-size=1280,2000", html_path.resolve().as_uri()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=90, cwd=tmp_path)
    assert png.exists(), f"chromium wrote no screenshot (rc {r.returncode}): {r.stderr[-2000:]}"


@pytest.mark.parametrize("kind", ["profile", "comparison"])
def test_report_renders_in_chromium(kind, tmp_path):
    docs = [make_doc(), make_doc(label="digits.fp32.onnx", accuracy=0.985, size_bytes=480_000)]
    docs[1]["runs"][0]["latency"]["avg_ns"] = 3_400_000.0
    page = render_profile_html(docs[0]) if kind == "profile" else render_comparison_html(docs)
    html_path = write_html(tmp_path / f"{kind}.html", page)
    png = tmp_path / f"{kind}.png"
    _screenshot(html_path, png, tmp_path)
    data = png.read_bytes()
    assert len(data) > 10_000
    width, height, bpp, pixels = decode_png(data)
    assert (width, height) == (1280, 2000)
    n = width * height
    colours, non_white, blue = set(), 0, 0
    for i in range(0, len(pixels), bpp):
        r, g, b = pixels[i], pixels[i + 1], pixels[i + 2]
        if r < 240 or g < 240 or b < 240:
            non_white += 1
            colours.add((r >> 4, g >> 4, b >> 4))
            if b > r + 60 and b > g + 20:  # the charts' blue (#1f77b4): an SVG was drawn, not only text
                blue += 1
    assert non_white / n > 0.02, f"only {non_white / n:.2%} of the page is not white"
    assert len(colours) >= 8, colours
    assert blue > 500, blue
