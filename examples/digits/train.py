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
import json
from pathlib import Path

import torch

from ..training import accuracy, fit_classifier, load_digits_split, save_for_conversion
from .model import DigitsCNN

DEFAULT_OUT = Path(__file__).resolve().parent / "artifacts"
FILES = ("digits.pt2", "digits.safetensors", "calib.npz", "val.npz", "train.json")


def train(out: Path = DEFAULT_OUT, epochs: int = 30, seed: int = 0, force: bool = False) -> dict:
    out = Path(out)
    if not force and all((out / f).exists() for f in FILES):
        return json.loads((out / "train.json").read_text())
    x_tr, x_te, y_tr, y_te = load_digits_split(seed)
    torch.manual_seed(seed)
    model = fit_classifier(DigitsCNN(), x_tr, y_tr, epochs=epochs, lr=3e-3, seed=seed)
    acc = accuracy(model, x_te, y_te)
    save_for_conversion(model, out, "digits", x_tr[:256], x_te, y_te)
    from safetensors.torch import save_file

    save_file(model.state_dict(), str(out / "digits.safetensors"))
    info = {"test_accuracy": acc, "train_samples": len(x_tr), "test_samples": len(x_te), "epochs": epochs}
    (out / "train.json").write_text(json.dumps(info, indent=2))
    return info


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
