"""The GGUF file's own tokenizer for the edge engine: byte-level BPE (``tokenizer.ggml.model = gpt2``).

Control tokens (``<|im_start|>``) are matched literally first, then text is split by the
pre-tokenizer llama.cpp would use (GPT-2's pattern; ``smollm`` and ``llama-bpe`` split digits
individually / in threes), mapped to GPT-2's byte alphabet and merged by rank.
"""

from __future__ import annotations

import re
from functools import lru_cache

from ..errors import ModelFormatError

CONTROL = 3

_LETTER = r"[^\W\d_]"
_GPT2 = re.compile(rf"'s|'t|'re|'ve|'m|'ll|'d| ?{_LETTER}+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+")
_SINGLE_DIGITS = re.compile(rf"'s|'t|'re|'ve|'m|'ll|'d| ?{_LETTER}+|\d| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+")
_LLAMA3 = re.compile(rf"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\w]?{_LETTER}+|\d{{1,3}}| ?(?:[^\s\w]|_)+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS = {"gpt-2": _GPT2, "default": _GPT2, "smollm": _SINGLE_DIGITS, "llama-bpe": _LLAMA3}


@lru_cache(maxsize=1)
def byte_alphabet() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


class BPETokenizer:
    def __init__(self, tokens: list[str], types: list[int], merges: list[str], pre: str,
                 bos: int | None, eos: int | None, add_bos: bool) -> None:
        if pre not in PRE_TOKENIZERS:
            raise ModelFormatError(f"pre-tokenizer '{pre}' is not supported by the edge engine; "
                                   f"supported: {', '.join(PRE_TOKENIZERS)}")
        self.tokens, self.pattern = tokens, PRE_TOKENIZERS[pre]
        self.ids = {t: i for i, t in enumerate(tokens)}
        self.ranks = {tuple(m.split(" ", 1)): r for r, m in enumerate(merges)}
        self.bos, self.eos, self.add_bos = bos, eos, add_bos
        specials = sorted((t for t, k in zip(tokens, types) if k == CONTROL and t), key=len, reverse=True)
        self.special = re.compile("(" + "|".join(map(re.escape, specials)) + ")") if specials else None
        self.decoder = {c: b for b, c in byte_alphabet().items()}
        self._cache: dict[str, list[int]] = {}

    def _bpe(self, word: str) -> list[int]:
        if word in self._cache:
            return self._cache[word]
        parts = list(word)
        while len(parts) > 1:
            pairs = [(self.ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            rank, i = min(pairs)
            if rank == 1 << 30:
                break
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        ids = [self.ids[p] for p in parts if p in self.ids]
        self._cache[word] = ids
        return ids

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        out = [self.bos] if (self.add_bos if add_bos is None else add_bos) and self.bos is not None else []
        alphabet = byte_alphabet()
        for piece in (self.special.split(text) if self.special else [text]):
            if not piece:
                continue
            if piece in self.ids and self.special and self.special.fullmatch(piece):
                out.append(self.ids[piece])
                continue
            for word in self.pattern.findall(piece):
                out += self._bpe("".join(alphabet[b] for b in word.encode("utf-8")))
        return out

    def decode(self, ids) -> str:
        data = bytearray()
        for i in ids:
            t = self.tokens[int(i)]
            if self.special and self.special.fullmatch(t):
                data += t.encode()
            else:
                data += bytes(self.decoder.get(c, 32) for c in t)
        return data.decode("utf-8", errors="replace")


def tokenizer_from_gguf(meta: dict) -> BPETokenizer:
    model = meta.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise ModelFormatError(f"the edge engine reads byte-level BPE vocabularies (gpt2); this file's is '{model}'")

    def values(key: str, kind: type, required: bool = True) -> list:
        entry = meta.get(key)
        vals = entry.get("values") if isinstance(entry, dict) else None
        if vals is None and not required:
            return []
        if not isinstance(vals, list) or (required and not vals) or not all(
                isinstance(v, kind) and not isinstance(v, bool) for v in vals):
            raise ModelFormatError(f"{key} in the GGUF header is not a list of {kind.__name__}; the file is corrupted")
        return vals

    tokens = values("tokenizer.ggml.tokens", str)
    types = values("tokenizer.ggml.token_type", int, required=False) or [1] * len(tokens)
    merges = values("tokenizer.ggml.merges", str, required=False)
    if len(types) != len(tokens):
        raise ModelFormatError(f"tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens; "
                               "the file is corrupted")

    def token_id(key: str) -> int | None:
        v = meta.get(key)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < len(tokens):
            raise ModelFormatError(f"{key} is {v!r}, not a token id below {len(tokens)}; the file is corrupted")
        return v

    return BPETokenizer(tokens, types, merges, str(meta.get("tokenizer.ggml.pre", "default")),
                        token_id("tokenizer.ggml.bos_token_id"), token_id("tokenizer.ggml.eos_token_id"),
                        bool(meta.get("tokenizer.ggml.add_bos_token", False)))
