"""Tokenizer metadata for GGUF: GPT-2 style BPE, SentencePiece and WordPiece (BERT) vocabularies.

Token lists and types follow llama.cpp's conventions (its ``llama-vocab.cpp`` reads them): token
types NORMAL / CONTROL / USER_DEFINED / UNUSED / BYTE, ``[PAD<i>]`` fillers up to the model's
vocab size, WordPiece tokens in "phantom space" form. Special-token ids, merges, add-bos/eos flags
and the chat template come from gguf's ``SpecialVocab`` (llama.cpp's own reader of those files).

``tokenizer.ggml.pre`` selects llama.cpp's pre-tokenizer regex. llama.cpp's converter identifies it
by hashing a tokenization; we read the pre-tokenizer that tokenizer.json declares instead, and the
conversion's parity check compares llama.cpp's tokenization with the Hugging Face tokenizer's.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from ...errors import SourceError, require
from .checkpoint import HFCheckpoint

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# llama.cpp pre-tokenizer names by the regex tokenizer.json splits with (prefixes suffice)
_SPLIT_PATTERNS = {
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}": "llama-bpe",
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?": "qwen2",
}


@dataclass
class Vocab:
    model: str  # tokenizer.ggml.model: gpt2 | llama | bert
    pre: str
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    notes: list[str] = field(default_factory=list)


def pre_tokenizer_name(tokenizer_json: dict) -> str:
    pre = tokenizer_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    if kinds == ["BertPreTokenizer"]:
        return "jina-v2-en"  # what llama.cpp's converter names the bert-base-uncased WordPiece vocab
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "smollm"  # GPT-2's regex with single digits
    for p in parts:
        if p.get("type") == "Split":
            regex = (p.get("pattern") or {}).get("Regex", "")
            for prefix, name in _SPLIT_PATTERNS.items():
                if regex.startswith(prefix):
                    return name
    return "default"


def _auto_tokenizer(ckpt: HFCheckpoint):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = require("transformers", "convert", "Reading Hugging Face tokenizers")
    try:
        return transformers.AutoTokenizer.from_pretrained(str(ckpt.path), trust_remote_code=False)
    except Exception as e:  # missing or malformed tokenizer files
        raise SourceError(f"cannot load the tokenizer in {ckpt.path}: {' '.join(str(e).split())[:200]}") from e


def _looks_special(t: str) -> bool:
    return t in ("<pad>", "<mask>") or bool(re.fullmatch(r"<\|.*\|>|<unused.*>", t))


def _base_vocab(ckpt: HFCheckpoint, n_vocab: int):
    """Tokens and types by id, padded to ``n_vocab`` (llama.cpp needs one entry per embedding row)."""
    tok = _auto_tokenizer(ckpt)
    by_id = {i: s for s, i in tok.get_vocab().items()}
    added = tok.get_added_vocab()
    decoder = getattr(tok, "added_tokens_decoder", {})
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
            continue
        t = by_id[i]
        kind = NORMAL
        if t in added:
            info = decoder.get(i)
            if info is not None and (info.special or _looks_special(t)):
                kind = CONTROL
            else:
                kind = USER_DEFINED
        tokens.append(t)
        types.append(kind)
    return tok, tokens, types


def read_vocab(ckpt: HFCheckpoint, n_vocab: int | None) -> Vocab:
    """The vocabulary of ``ckpt`` in llama.cpp's terms (BPE, SentencePiece or WordPiece)."""
    tj = ckpt.json("tokenizer.json")
    kind = ((tj or {}).get("model") or {}).get("type")
    if (ckpt.path / "tokenizer.model").is_file() and kind != "WordPiece":
        return _sentencepiece(ckpt, n_vocab)
    if tj is None:
        raise SourceError(f"{ckpt.path} has neither tokenizer.json nor tokenizer.model")
    if kind == "WordPiece":
        _, tokens, types = _base_vocab(ckpt, n_vocab or len(tj["model"]["vocab"]))

        def phantom(t: str, kind: int) -> str:  # llama.cpp's WordPiece marks word starts, not continuations
            if kind == CONTROL:
                return t
            return t[2:] if t.startswith("##") else "\u2581" + t

        return Vocab("bert", pre_tokenizer_name(tj), [phantom(t, k) for t, k in zip(tokens, types)], types)
    if kind == "BPE":
        if tj["model"].get("byte_fallback"):
            raise SourceError("BPE with byte fallback (Llama-2-style tokenizer.json without tokenizer.model) "
                              "is not supported yet: add the tokenizer.model file")
        n = n_vocab or len(tj["model"]["vocab"]) + len(tj.get("added_tokens", []))
        _, tokens, types = _base_vocab(ckpt, n)
        return Vocab("gpt2", pre_tokenizer_name(tj), tokens, types)
    raise SourceError(f"tokenizer model type '{kind}' in {ckpt.path}/tokenizer.json is not supported "
                      "(BPE, WordPiece or a SentencePiece tokenizer.model)")


def _sentencepiece(ckpt: HFCheckpoint, n_vocab: int | None) -> Vocab:
    spm = require("sentencepiece", "convert", "Reading SentencePiece tokenizers")
    sp = spm.SentencePieceProcessor()
    if not sp.LoadFromFile(str(ckpt.path / "tokenizer.model")):
        raise SourceError(f"{ckpt.path}/tokenizer.model is not a SentencePiece model")
    n = n_vocab or sp.vocab_size()
    tokens = [f"[PAD{i}]" for i in range(n)]
    scores = [-10000.0] * n
    types = [UNUSED] * n
    for i in range(min(n, sp.vocab_size())):
        tokens[i], scores[i] = sp.IdToPiece(i), float(sp.GetScore(i))
        types[i] = (UNKNOWN if sp.IsUnknown(i) else CONTROL if sp.IsControl(i) else UNUSED if sp.IsUnused(i)
                    else BYTE if sp.IsByte(i) else NORMAL)
    added = ckpt.json("added_tokens.json") or {}
    for t, i in added.items():
        if 0 <= i < n:
            tokens[i], scores[i], types[i] = t, -1000.0, USER_DEFINED
    for i, info in ((ckpt.json("tokenizer_config.json") or {}).get("added_tokens_decoder") or {}).items():
        i = int(i)
        if 0 <= i < n and isinstance(info, dict):
            t = info.get("content", tokens[i])
            special = info.get("special") or _looks_special(t)
            tokens[i], scores[i] = (t if special else t.replace("\u2581", " ")), -1000.0
            types[i] = CONTROL if special else USER_DEFINED
    return Vocab("llama", "default", tokens, types, scores)


def write_vocab(writer, ckpt: HFCheckpoint, vocab: Vocab) -> None:
    import gguf

    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    special = gguf.SpecialVocab(ckpt.path, load_merges=vocab.model == "gpt2", n_vocab=len(vocab.tokens))
    special.add_to_gguf(writer, quiet=True)

