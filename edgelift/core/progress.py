"""Numbered progress steps for long conversions (the CLI draws them as a bar)."""

from __future__ import annotations

from typing import Callable


class Steps:
    """``steps("what")`` counts one step done and reports ``(what, done, total)`` to ``callback``, if any."""

    def __init__(self, total: int, callback: Callable[[str, int, int], None] | None) -> None:
        self.total, self.done, self.callback = total, 0, callback

    def __call__(self, description: str) -> None:
        self.done += 1
        if self.callback:
            self.callback(description, self.done, self.total)
