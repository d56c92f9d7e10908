"""A small U-Net that segments shapes in high-resolution images: the patch planner's skip-connection case.

Three down-sampling levels with skip connections concatenated back on the way up (one transposed
convolution, two nearest upsamplings), trained by our own code on synthetic scenes (discs to find among
bars and noise) at 128x128 and exported fully convolutional at any size, e.g. 960x960. At that size its
full-resolution feature maps dominate memory: a plain run keeps the first level's skip tensor while
the rest of the network runs, which is what patch-based inference removes.

    python -m examples.models.unet OUT_DIR [--size 960]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1), nn.ReLU(), nn.Conv2d(cout, cout, 3, 1, 1), nn.ReLU())


class UNet(nn.Module):
    def __init__(self, widths: tuple[int, ...] = (8, 16, 32, 64)) -> None:
        super().__init__()
        w1, w2, w3, w4 = widths
        self.enc1, self.enc2, self.enc3, self.mid = _block(3, w1), _block(w1, w2), _block(w2, w3), _block(w3, w4)
        self.pool = nn.MaxPool2d(2)
        self.up3 = nn.ConvTranspose2d(w4, w3, 2, 2)
        self.dec3, self.dec2, self.dec1 = _block(2 * w3, w3), _block(w3 + w2, w2), _block(w2 + w1, w1)
        self.head = nn.Conv2d(w1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = nn.functional.interpolate
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        e3 = self.enc3(self.pool(e2))
        m = self.mid(self.pool(e3))
        d3 = self.dec3(torch.cat([self.up3(m), e3], 1))
        d2 = self.dec2(torch.cat([up(d3, scale_factor=2, mode="nearest"), e2], 1))
        d1 = self.dec1(torch.cat([up(d2, scale_factor=2, mode="nearest"), e1], 1))
        return torch.sigmoid(self.head(d1))


def scenes(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images with discs (the class to segment), bars (distractors) and noise; masks of the discs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images = rng.normal(0.5, 0.08, (n, 3, size, size)).astype(np.float32)
    masks = np.zeros((n, 1, size, size), np.float32)
    for k in range(n):
        for _ in range(rng.integers(1, 5)):
            cy, cx, r = rng.uniform(0, size, 2).tolist() + [rng.uniform(size / 16, size / 6)]
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            images[k][:, disc] = rng.uniform(0, 1, (3, 1))
            masks[k, 0][disc] = 1.0
        for _ in range(rng.integers(1, 4)):
            y0, x0 = rng.integers(0, size, 2)
            h, w = (rng.integers(size // 20, size // 3), rng.integers(2, size // 16))[::rng.choice([1, -1])]
            bar = (yy >= y0) & (yy < y0 + h) & (xx >= x0) & (xx < x0 + w)
            images[k][:, bar] = rng.uniform(0, 1, (3, 1))
            masks[k, 0][bar] = 0.0
    return images, masks


def train(steps: int = 300, size: int = 128, seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    model = UNet()
    images, masks = scenes(256, size, seed)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    x, y = torch.from_numpy(images), torch.from_numpy(masks)
    for step in range(steps):
        idx = torch.randint(0, len(x), (16,))
        loss = nn.functional.binary_cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def export(model: UNet, path: Path, size: int) -> Path:
    """The model as a static-shape ONNX file at ``size`` x ``size``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, (torch.zeros(1, 3, size, size),), str(path), dynamo=False, input_names=["image"],
                      output_names=["mask"], opset_version=17)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--size", type=int, default=960)
    args = ap.parse_args()
    model = train()
    images, masks = scenes(8, 128, seed=1)
    with torch.no_grad():
        iou = ((model(torch.from_numpy(images)) > 0.5).numpy() & (masks > 0.5)).sum() / max(
            1, ((model(torch.from_numpy(images)) > 0.5).numpy() | (masks > 0.5)).sum())
    print(f"disc IoU on held-out scenes: {iou:.3f}")
    print(export(model, args.out / f"unet_{args.size}.onnx", args.size))


if __name__ == "__main__":
    main()
