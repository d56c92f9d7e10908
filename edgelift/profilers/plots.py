"""Plots as files: SVG written directly (no plotting library on a device), PNG through matplotlib.

One function per figure; each takes plain numbers, so reports can reuse them.
"""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import escape

from ..core.atomic import atomic_write_text
from ..errors import InvalidOptionError, MissingDependencyError
from ..runtimes.memory import human_bytes as _short


def bar_chart_svg(values: list[float], labels: list[str], *, title: str, y_label: str, highlight: int | None = None,
                  lines: dict[str, float] | None = None, width: int = 960, height: int = 420) -> str:
    """Vertical bars with an optional highlighted bar and labelled horizontal lines (budgets, peaks)."""
    left, right, top, bottom = 70, 20, 40, 60
    w, h = width - left - right, height - top - bottom
    top_value = max([*values, *(lines or {}).values(), 1e-12]) * 1.08
    n = max(1, len(values))
    bw = w / n
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
             f'font-size="11">',
             f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="14">{escape(title)}</text>',
             f'<line x1="{left}" y1="{top + h}" x2="{left + w}" y2="{top + h}" stroke="#333"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + h}" stroke="#333"/>',
             f'<text x="16" y="{top + h / 2}" transform="rotate(-90 16 {top + h / 2})" text-anchor="middle">'
             f'{escape(y_label)}</text>']
    for k in range(5):
        v = top_value * k / 4
        y = top + h - h * v / top_value
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_short(v)}</text>')
    for i, v in enumerate(values):
        bh = h * v / top_value
        color = "#d62728" if i == highlight else "#1f77b4"
        parts.append(f'<rect x="{left + i * bw + 0.5:.2f}" y="{top + h - bh:.2f}" width="{max(bw - 1, 0.5):.2f}" '
                     f'height="{bh:.2f}" fill="{color}"><title>{escape(labels[i])}: {_short(v)}</title></rect>')
    step = max(1, n // 12)
    for i in range(0, n, step):
        parts.append(f'<text x="{left + (i + 0.5) * bw:.1f}" y="{top + h + 14}" text-anchor="middle">{i}</text>')
    parts.append(f'<text x="{left + w / 2}" y="{height - 12}" text-anchor="middle">op (schedule order)</text>')
    for name, v in (lines or {}).items():
        y = top + h - h * v / top_value
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + w}" y2="{y:.1f}" stroke="#2ca02c" '
                     f'stroke-dasharray="6 4"/>')
        parts.append(f'<text x="{left + w - 4}" y="{y - 4:.1f}" text-anchor="end" fill="#2ca02c">'
                     f'{escape(name)} {_short(v)}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def memory_profile_plot(plan, path: str | Path, *, budget: int | None = None, patched_peak: int | None = None) -> Path:
    """The activation memory in use at each op of ``plan`` (a MemoryPlan), the peak in red."""
    path = Path(path)
    values = [op.live_bytes for op in plan.ops]
    labels = [f"{op.index} {op.op_type}" for op in plan.ops]
    lines = {}
    if budget is not None:
        lines["budget"] = budget
    if patched_peak is not None:
        lines["patched peak"] = patched_peak
    title = f"activation memory per op (peak {_short(plan.peak_bytes)})"
    if path.suffix.lower() == ".svg":
        return atomic_write_text(path, bar_chart_svg(values, labels, title=title, y_label="bytes in use",
                                                     highlight=plan.peak_op.index, lines=lines))
    if path.suffix.lower() != ".png":
        raise InvalidOptionError(f"--plot {path.name}: write .svg or .png")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise MissingDependencyError("PNG plots need matplotlib (pip install matplotlib); .svg needs nothing") from e
    fig, ax = plt.subplots(figsize=(10, 4))
    colors = ["#d62728" if i == plan.peak_op.index else "#1f77b4" for i in range(len(values))]
    ax.bar(range(len(values)), values, color=colors, width=1.0)
    for name, v in lines.items():
        ax.axhline(v, color="#2ca02c", linestyle="--")
        ax.text(len(values) - 1, v, f"{name}", ha="right", va="bottom", color="#2ca02c")
    ax.set_xlabel("op (schedule order)")
    ax.set_ylabel("bytes in use")
    ax.set_title(title)
    tmp = path.with_name(path.name + ".part.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path
