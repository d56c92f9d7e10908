"""Train the tiny transformer on the digits data (seconds on CPU); save .pt2 + npz like the CNN example.

    python -m examples.tiny_transformer.train [--out DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..training import accuracy, fit_classifier, load_digits_split, save_for_conversion
from .model import TinyTransformer

DEFAULT_OUT = Path(__file__).resolve().parent / "artifacts"
FILES = ("tiny_transformer.pt2", "calib.npz", "val.npz", "train.json")


def train(out: Path = DEFAULT_OUT, epochs: int = 40, seed: int = 0, force: bool = False) -> dict:
    out = Path(out)
    if not force and all((out / f).exists() for f in FILES):
        return json.loads((out / "train.json").read_text())
    x_tr, x_te, y_tr, y_te = load_digits_split(seed)
    torch.manual_seed(seed)
    model = fit_classifier(TinyTransformer(), x_tr, y_tr, epochs=epochs, lr=2e-3, seed=seed)
    acc = accuracy(model, x_te, y_te)
    save_for_conversion(model, out, "tiny_transformer", x_tr[:256], x_te, y_te)
    info = {"test_accuracy": acc, "epochs": epochs}
    (out / "train.json").write_text(json.dumps(info, indent=2))
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    info = train(a.out, force=a.force)
    print(f"tiny transformer: test accuracy {100 * info['test_accuracy']:.2f}% -> {a.out}")


if __name__ == "__main__":
    main()
