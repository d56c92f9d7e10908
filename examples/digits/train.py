"""Train the digits CNN (seconds on CPU) and save what `edge convert` takes.

Writes to examples/digits/artifacts/ (or --out):
  digits.pt2           torch.export program, dynamic batch axis
  digits.safetensors   weights for the factory source examples.digits.model:build_model
  calib.npz            256 training images keyed by the input name `x` (calibration)
  val.npz              the held-out test images `x` and their `labels` (parity and accuracy)

    python -m examples.digits.train [--out DIR] [--force]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..training import train_example
from .model import DigitsCNN

DEFAULT_OUT = Path(__file__).resolve().parent / "artifacts"


def train(out: Path = DEFAULT_OUT, epochs: int = 30, seed: int = 0, force: bool = False) -> dict:
    return train_example(DigitsCNN, "digits", out, epochs=epochs, lr=3e-3, seed=seed, force=force, safetensors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--force", action="store_true", help="retrain even if the artifacts exist")
    a = ap.parse_args()
    info = train(a.out, a.epochs, force=a.force)
    print(f"digits CNN: test accuracy {100 * info['test_accuracy']:.2f}% -> {a.out}")


if __name__ == "__main__":
    main()
