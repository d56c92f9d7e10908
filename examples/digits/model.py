"""A small CNN for scikit-learn's 8x8 `digits` images (1 channel, 10 classes)."""

import torch
import torch.nn as nn
import torch.nn.functional as F


class DigitsCNN(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 2 * 2, 64)
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 1, 8, 8) in [0, 1]
        x = F.relu(self.conv1(x))                    # (B, 16, 8, 8)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)   # (B, 32, 4, 4)
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)   # (B, 64, 2, 2)
        x = F.relu(self.fc1(x.flatten(1)))           # (B, 64)
        return self.fc2(x)                           # (B, 10) logits


def build_model() -> DigitsCNN:
    """Factory for `edge convert examples.digits.model:build_model --weights digits.safetensors`."""
    return DigitsCNN()
