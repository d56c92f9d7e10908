"""The GGUF file's own tokenizer for the edge engine, as llama.cpp's ``llama-vocab.cpp`` tokenizes.

- byte-level BPE (``tokenizer.ggml.model = gpt2``: SmolLM2, Llama 3, Qwen2): control tokens
  (``<|im_start|>``) are matched literally first, then text is split by the pre-tokenizer llama.cpp
  would use (GPT-2's pattern; ``smollm`` and ``qwen2`` split digits one by one, ``llama-bpe`` in
  threes), mapped to GPT-2's byte alphabet and merged by rank;
- SentencePiece (``llama``: Llama 2, TinyLlama, Mistral): spaces become ``▁`` (one is prepended
  unless ``add_space_prefix`` is false), characters are merged by the score of the merged piece
  (highest first, leftmost on ties), and a character with no piece becomes its ``<0xXX>`` byte tokens.
"""

from __future__ import annotations

import re
from functools import lru_cache

from ..errors import ModelFormatError

CONTROL = 3

_LETTER = r"[^\W\d_]"
_GPT2 = re.compile(rf"'s|'t|'re|'ve|'m|'ll|'d| ?{_LETTER}+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+")
_SINGLE_DIGITS = re.compile(rf"'s|'t|'re|'ve|'m|'ll|'d| ?{_LETTER}+|\d| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+")
# \p{L} is [^\W\d_]; "not a letter or number" is (?:[^\w]|_), CR/LF excluded where llama.cpp does
_LLAMA3 = re.compile(rf"(?i:'s|'t|'re|'ve|'m|'ll|'d)|(?:[^\r\n\w]|_)?{_LETTER}+|\d{{1,3}}| ?(?:[^\s\w]|_)+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = re.compile(rf"(?i:'s|'t|'re|'ve|'m|'ll|'d)|(?:[^\r\n\w]|_)?{_LETTER}+|\d| ?(?:[^\s\w]|_)+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS = {"gpt-2": _GPT2, "default": _GPT2, "smollm": _SINGLE_DIGITS, "llama-bpe": _LLAMA3, "qwen2": _QWEN2}


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
        # keyed by the merge line itself ("a b", the header's own strings): no tuple of two new strings per
        # merge (~8 MB on a 49k vocabulary, memory a small board does not have to spare)
        self.ranks = {m: r for r, m in enumerate(merges)}
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
            pairs = [(self.ranks.get(f"{a} {b}", 1 << 30), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
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


SPACE = "\u2581"  # SentencePiece's visible space
BYTE = 6


class SentencePieceTokenizer:
    """llama.cpp's ``llm_tokenizer_spm``: score-ordered merges of characters, byte fallback."""

    def __init__(self, tokens: list[str], types: list[int], scores: list[float], bos: int | None, eos: int | None,
                 add_bos: bool, add_space_prefix: bool) -> None:
        self.tokens, self.scores = tokens, scores
        self.ids = {t: i for i, t in enumerate(tokens)}
        self.bos, self.eos, self.add_bos, self.add_space_prefix = bos, eos, add_bos, add_space_prefix
        specials = sorted((t for t, k in zip(tokens, types) if k == CONTROL and t), key=len, reverse=True)
        self.special = re.compile("(" + "|".join(map(re.escape, specials)) + ")") if specials else None
        self.byte_ids = {int(t[3:5], 16): i for i, (t, k) in enumerate(zip(tokens, types))
                         if k == BYTE and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", t)}

    def _pieces(self, text: str) -> list[int]:
        import heapq

        sym = list(text)  # Unicode characters; merged in place, None marks a consumed slot
        nxt, prv = list(range(1, len(sym) + 1)), list(range(-1, len(sym) - 1))
        heap: list[tuple[float, int, int, str]] = []

        def push(i: int) -> None:
            j = nxt[i]
            if j < len(sym):
                piece = sym[i] + sym[j]
                if piece in self.ids:
                    heapq.heappush(heap, (-self.scores[self.ids[piece]], i, j, piece))

        for i in range(len(sym) - 1):
            push(i)
        while heap:
            _, i, j, piece = heapq.heappop(heap)
            if sym[i] is None or sym[j] is None or nxt[i] != j or sym[i] + sym[j] != piece:
                continue  # stale: one side was merged since this pair was queued
            sym[i], sym[j] = piece, None
            nxt[i] = nxt[j]
            if nxt[i] < len(sym):
                prv[nxt[i]] = i
            if prv[i] >= 0:
                push(prv[i])
            push(i)
        out = []
        for s in (x for x in sym if x is not None):
            if s in self.ids:
                out.append(self.ids[s])
            else:  # byte fallback, as SentencePiece and llama.cpp do
                out += [self.byte_ids[b] for b in s.encode("utf-8") if b in self.byte_ids]
        return out

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        out = [self.bos] if (self.add_bos if add_bos is None else add_bos) and self.bos is not None else []
        first = True
        for piece in (self.special.split(text) if self.special else [text]):
            if not piece:
                continue
            if self.special and self.special.fullmatch(piece) and piece in self.ids:
                out.append(self.ids[piece])
                first = False
                continue
            if self.add_space_prefix and first:
                piece = " " + piece
            first = False
            out += self._pieces(piece.replace(" ", SPACE))
        return out

    def decode(self, ids) -> str:
        data = bytearray()
        for i in ids:
            t = self.tokens[int(i)]
            if int(i) in self.byte_ids.values() and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", t):
                data.append(int(t[3:5], 16))
            elif self.special and self.special.fullmatch(t):
                data += t.encode()
            else:
                data += t.replace(SPACE, " ").encode("utf-8")
        return data.decode("utf-8", errors="replace")


def tokenizer_from_gguf(meta: dict) -> BPETokenizer | SentencePieceTokenizer:
    model = meta.get("tokenizer.ggml.model")
    if model not in ("gpt2", "llama"):
        raise ModelFormatError(f"the edge engine reads byte-level BPE (gpt2) and SentencePiece (llama) vocabularies; "
                               f"this file's is '{model}'")

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

    bos, eos = token_id("tokenizer.ggml.bos_token_id"), token_id("tokenizer.ggml.eos_token_id")
    if model == "llama":
        scores = values("tokenizer.ggml.scores", float)
        if len(scores) != len(tokens):
            raise ModelFormatError(f"tokenizer.ggml.scores has {len(scores)} entries for {len(tokens)} tokens; "
                                   "the file is corrupted")
        return SentencePieceTokenizer(tokens, types, scores, bos, eos,
                                      bool(meta.get("tokenizer.ggml.add_bos_token", True)),
                                      bool(meta.get("tokenizer.ggml.add_space_prefix", True)))
    return BPETokenizer(tokens, types, merges, str(meta.get("tokenizer.ggml.pre", "default")), bos, eos,
                        bool(meta.get("tokenizer.ggml.add_bos_token", False)))
