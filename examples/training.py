"""What the example trainers share: the scikit-learn digits data, a training loop, and the files
`edge convert` takes (a .pt2 with a dynamic batch axis, calibration and validation .npz)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def load_digits_split(seed: int = 0):
    """8x8 digit images scaled to [0, 1] as (N, 1, 8, 8) float32; 80/20 stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    return train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)


def fit_classifier(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, *, epochs: int, lr: float,
                   seed: int = 0, batch_size: int = 64) -> torch.nn.Module:
    """Plain cross-entropy training with AdamW, deterministic for a given seed."""
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(xt), generator=g).split(batch_size):
            opt.zero_grad()
            F.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval()


def accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def save_for_conversion(model: torch.nn.Module, out: Path, name: str, x_calib: np.ndarray,
                        x_val: np.ndarray, y_val: np.ndarray) -> None:
    """Write <name>.pt2 (dynamic batch), calib.npz (`x`) and val.npz (`x`, `labels`)."""
    out.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=4096)
    ep = torch.export.export(model, (torch.from_numpy(x_val[:2]),), dynamic_shapes=({0: batch},))
    torch.export.save(ep, str(out / f"{name}.pt2"))
    np.savez(out / "calib.npz", x=x_calib)
    np.savez(out / "val.npz", x=x_val, labels=y_val)


def train_example(build, name: str, out: Path, *, epochs: int, lr: float, seed: int = 0, force: bool = False,
                  safetensors: bool = False) -> dict:
    """Train ``build()`` on the digits data and write what `edge convert` takes: <name>.pt2, calib.npz,
    val.npz, train.json (and <name>.safetensors for the factory source). Files already there are
    reused unless ``force``; returns the training summary."""
    import json

    out = Path(out)
    files = [f"{name}.pt2", "calib.npz", "val.npz", "train.json"] + ([f"{name}.safetensors"] if safetensors else [])
    if not force and all((out / f).exists() for f in files):
        return json.loads((out / "train.json").read_text())
    x_tr, x_te, y_tr, y_te = load_digits_split(seed)
    torch.manual_seed(seed)
    model = fit_classifier(build(), x_tr, y_tr, epochs=epochs, lr=lr, seed=seed)
    save_for_conversion(model, out, name, x_tr[:256], x_te, y_te)
    if safetensors:
        from safetensors.torch import save_file

        save_file(model.state_dict(), str(out / f"{name}.safetensors"))
    info = {"test_accuracy": accuracy(model, x_te, y_te), "train_samples": len(x_tr), "test_samples": len(x_te),
            "epochs": epochs}
    (out / "train.json").write_text(json.dumps(info, indent=2))
    return info
