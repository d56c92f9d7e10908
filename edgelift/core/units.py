"""One convention for sizes everywhere edgelift prints them — console, Markdown, HTML, plots: decimal SI
units (1 kB = 1,000 B, 1 MB = 1,000,000 B), as disks, model hubs and ``ls -lh --si`` count. JSON reports
carry plain bytes. Budgets still parse both (``256KB``, ``2MiB``), see ``runtimes.budget.parse_budget``."""

from __future__ import annotations

_STEPS = (("GB", 1e9), ("MB", 1e6), ("kB", 1e3))


def format_bytes(n: float) -> str:
    """``1500000`` -> ``'1.5 MB'``; ``512`` -> ``'512 B'``."""
    for unit, size in _STEPS:
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"
