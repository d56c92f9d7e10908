"""Train the tiny transformer on the digits data (seconds on CPU); save .pt2 + npz like the CNN example.

    python -m examples.tiny_transformer.train [--out DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..training import train_example
from .model import TinyTransformer

DEFAULT_OUT = Path(__file__).resolve().parent / "artifacts"


def train(out: Path = DEFAULT_OUT, epochs: int = 40, seed: int = 0, force: bool = False) -> dict:
    return train_example(TinyTransformer, "tiny_transformer", out, epochs=epochs, lr=2e-3, seed=seed, force=force)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    info = train(a.out, force=a.force)
    print(f"tiny transformer: test accuracy {100 * info['test_accuracy']:.2f}% -> {a.out}")


if __name__ == "__main__":
    main()
