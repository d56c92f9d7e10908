"""Train the tiny transformer on the digits data (seconds on CPU); save .pt2 + npz like the CNN example.

    python -m examples.tiny_transformer.train [--out DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..digits.train import load_data
from .model import TinyTransformer

DEFAULT_OUT = Path(__file__).resolve().parent / "artifacts"
FILES = ("tiny_transformer.pt2", "calib.npz", "val.npz", "train.json")


def train(out: Path = DEFAULT_OUT, epochs: int = 40, seed: int = 0, force: bool = False) -> dict:
    out = Path(out)
    if not force and all((out / f).exists() for f in FILES):
        return json.loads((out / "train.json").read_text())
    torch.manual_seed(seed)
    x_tr, x_te, y_tr, y_te = load_data(seed)
    model = TinyTransformer()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
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
    batch = torch.export.Dim("batch", min=1, max=4096)
    ep = torch.export.export(model, (torch.from_numpy(x_te[:2]),), dynamic_shapes=({0: batch},))
    torch.export.save(ep, str(out / "tiny_transformer.pt2"))
    np.savez(out / "calib.npz", x=x_tr[:256])
    np.savez(out / "val.npz", x=x_te, labels=y_te)
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
