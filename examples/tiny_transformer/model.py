"""A small transformer encoder classifier, to show what int4 (MatMulNBits) does to MatMul weights.

It reads an 8x8 digit image as 8 tokens of 8 pixels (one per row), readable top to bottom.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, d: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.fc = nn.Linear(d, 4 * d)
        self.fc_out = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:              # (B, T, d)
        B, T, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)              # 3 x (B, T, d)
        q, k, v = (t.reshape(B, T, self.n_head, d // self.n_head).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * (d // self.n_head) ** -0.5  # (B, h, T, T)
        y = (att.softmax(-1) @ v).transpose(1, 2).reshape(B, T, d)   # (B, T, d)
        x = x + self.proj(y)
        return x + self.fc_out(F.gelu(self.fc(self.ln2(x))))


class TinyTransformer(nn.Module):
    def __init__(self, tokens: int = 8, features: int = 8, d: int = 64, n_layer: int = 2,
                 n_head: int = 4, num_classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Linear(features, d)
        self.pos = nn.Parameter(torch.zeros(1, tokens, d))
        self.blocks = nn.ModuleList(Block(d, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 1, 8, 8)
        h = self.embed(x.flatten(1, 2)) + self.pos        # (B, 8, d): one token per image row
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln_f(h).mean(1))            # (B, classes)


def build_model() -> TinyTransformer:
    return TinyTransformer()
