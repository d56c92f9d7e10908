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

import numpy as np
import torch
import torch.nn.functional as F

from .model import DigitsCNN

DEFAULT_OUT = Path(__file__).resolve().parent / "artifacts"
FILES = ("digits.pt2", "digits.safetensors", "calib.npz", "val.npz", "train.json")


def load_data(seed: int = 0):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8)
    y = d.target.astype(np.int64)
    return train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)


def train(out: Path = DEFAULT_OUT, epochs: int = 30, seed: int = 0, force: bool = False) -> dict:
    out = Path(out)
    if not force and all((out / f).exists() for f in FILES):
        return json.loads((out / "train.json").read_text())
    torch.manual_seed(seed)
    x_tr, x_te, y_tr, y_te = load_data(seed)
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(xt), generator=g).split(64):
            opt.zero_grad()
            F.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(torch.from_numpy(x_te)).argmax(1).numpy() == y_te).mean())

    out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    batch = torch.export.Dim("batch", min=1, max=4096)
    ep = torch.export.export(model, (torch.from_numpy(x_te[:2]),), dynamic_shapes=({0: batch},))
    torch.export.save(ep, str(out / "digits.pt2"))
    save_file(model.state_dict(), str(out / "digits.safetensors"))
    np.savez(out / "calib.npz", x=x_tr[:256])
    np.savez(out / "val.npz", x=x_te, labels=y_te)
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
