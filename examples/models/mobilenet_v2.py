"""MobileNetV2 (Sandler et al., 2018) in plain torch — torchvision does not install beside our torch.

Same architecture and parameter count as torchvision's ``mobilenet_v2`` (3,504,872 at 1000 classes).
"""

import torch
import torch.nn as nn


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def conv_bn_relu6(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers = [conv_bn_relu6(cin, hidden, 1)] if expand != 1 else []
        layers += [
            conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),  # depthwise
            nn.Conv2d(hidden, cout, 1, bias=False),                   # linear bottleneck
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    # (expansion t, channels c, repeats n, first stride s), from the paper's Table 2
    SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0) -> None:
        super().__init__()
        cin = _make_divisible(32 * width_mult)
        last = _make_divisible(1280 * max(1.0, width_mult))
        layers = [conv_bn_relu6(3, cin, 3, 2)]
        for t, c, n, s in self.SETTINGS:
            cout = _make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        layers.append(conv_bn_relu6(cin, last, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:   # (B, 3, H, W)
        x = self.features(x)                               # (B, 1280, H/32, W/32)
        x = x.mean((2, 3))                                 # global average pool
        return self.classifier(x)                          # (B, classes)


def build_model() -> MobileNetV2:
    torch.manual_seed(0)
    return MobileNetV2().eval()


def with_batch_statistics(model: nn.Module, batches: int = 2, seed: int = 3) -> nn.Module:
    """``model`` with BatchNorm statistics gathered on random images, in eval mode.

    MobileNetV2 with random weights has logits of ~1e-9 (the fan-out init shrinks activations layer by
    layer), below fp16's range; real statistics bring them to O(1), so fp16 and quantized artifacts can be
    judged by relative error.
    """
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.reset_running_stats()
            mod.momentum = None  # cumulative average
    model.train()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(8, 3, 224, 224, generator=g))
    return model.eval()


def main() -> None:
    """``python -m examples.models.mobilenet_v2 OUT.pt2``: MobileNetV2-224 (seed 0, BatchNorm statistics from
    random images) saved as a torch.export program, the source the README's memory-budget examples convert,
    and calib.npz beside it: images drawn like those statistics' (a model calibrated on another
    distribution than it normalizes for quantizes badly, and the parity gate says so)."""
    import argparse
    from pathlib import Path

    ap = argparse.ArgumentParser(description=main.__doc__.split(":")[0])
    ap.add_argument("out", type=Path, help="where to write the .pt2 program")
    args = ap.parse_args()
    model = with_batch_statistics(build_model())
    program = torch.export.export(model, (torch.zeros(1, 3, 224, 224),))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(args.out))
    import numpy as np

    images = torch.randn(16, 3, 224, 224, generator=torch.Generator().manual_seed(11)).numpy()
    np.savez(args.out.parent / "calib.npz", x=images.astype(np.float32))
    print(f"wrote {args.out} ({sum(p.numel() for p in model.parameters()):,} parameters) and calib.npz")


if __name__ == "__main__":
    main()
