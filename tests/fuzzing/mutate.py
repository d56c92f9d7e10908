"""Seeded mutators: broken and hostile variants of valid model files, one small function each.

Every mutator takes the seed's bytes (or a directory for .mlpackage) and a ``random.Random`` and
returns the mutant plus a short description of what it changed; the same seed and number give the
same mutant. Generic mutators (truncation, bit flips, interesting values at aligned words, chunk
edits) apply to every format; format-aware ones edit the fields readers trust (lengths, counts,
enums, offsets, nesting, names) so that mutants get past the magic number.
"""

from __future__ import annotations

import io
import json
import random
import struct
import zipfile
from typing import Callable

Mutant = tuple[bytes, str]
ByteMutator = Callable[[bytes, random.Random], Mutant]

INTERESTING_8 = [0x00, 0x01, 0x7F, 0x80, 0xFF]
INTERESTING_32 = [0, 1, 2, 7, 8, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x100000, 0x7FFFFFFF,
                  0x80000000, 0xFFFFFFFE, 0xFFFFFFFF]
INTERESTING_64 = INTERESTING_32 + [1 << 31, 1 << 32, (1 << 32) + 1, 1 << 40, 1 << 48, 1 << 62, 1 << 63,
                                   (1 << 64) - 1]


# --- generic ---------------------------------------------------------------------------------------

def truncate(data: bytes, rng: random.Random) -> Mutant:
    cut = rng.choice([rng.randrange(0, max(1, len(data))), rng.randrange(0, min(len(data), 256) or 1),
                      len(data) - 1 - rng.randrange(0, min(len(data), 64) or 1)])
    return data[:max(cut, 0)], f"truncated to {max(cut, 0)} of {len(data)} bytes"


def bit_flips(data: bytes, rng: random.Random) -> Mutant:
    buf = bytearray(data)
    n = rng.choice([1, 1, 2, 4, 8, 32])
    window = rng.choice([len(buf), min(len(buf), 4096)])  # the header region more often
    for _ in range(n):
        i = rng.randrange(window)
        buf[i] ^= 1 << rng.randrange(8)
    return bytes(buf), f"{n} bit flip(s)"


def byte_set(data: bytes, rng: random.Random) -> Mutant:
    buf = bytearray(data)
    n = rng.choice([1, 2, 8])
    for _ in range(n):
        buf[rng.randrange(min(len(buf), rng.choice([len(buf), 2048])))] = rng.choice(INTERESTING_8)
    return bytes(buf), f"{n} byte(s) set to boundary values"


def word_set(data: bytes, rng: random.Random) -> Mutant:
    """An aligned 4- or 8-byte word (a length, count or offset in most formats) set to a boundary value."""
    buf = bytearray(data)
    size = rng.choice([4, 8])
    limit = min(len(buf), rng.choice([len(buf), 4096])) - size
    if limit <= 0:
        return truncate(data, rng)
    pos = rng.randrange(0, limit) // size * size
    value = rng.choice(INTERESTING_32 if size == 4 else INTERESTING_64)
    buf[pos:pos + size] = value.to_bytes(size, "little")
    return bytes(buf), f"{size}-byte word at {pos} set to {value:#x}"


def chunk_edit(data: bytes, rng: random.Random) -> Mutant:
    if len(data) < 8:
        return bit_flips(data, rng)
    a = rng.randrange(len(data) - 1)
    b = min(len(data), a + rng.choice([1, 4, 16, 256, 4096]))
    kind = rng.choice(["delete", "duplicate", "random"])
    if kind == "delete":
        return data[:a] + data[b:], f"deleted bytes {a}..{b}"
    if kind == "duplicate":
        return data[:b] + data[a:b] + data[b:], f"duplicated bytes {a}..{b}"
    return data[:a] + rng.randbytes(b - a) + data[b:], f"random bytes at {a}..{b}"


GENERIC: list[ByteMutator] = [truncate, bit_flips, byte_set, word_set, chunk_edit]


# --- JSON documents (configs inside archives, manifests, device streams) ----------------------------

def json_edit(doc, rng: random.Random) -> tuple[object, str]:
    """One structural edit somewhere in a JSON value: a key dropped, a value retyped, a huge number,
    a nesting bomb, an empty list."""
    paths = _json_paths(doc)
    if not paths:
        return _bomb(rng), "replaced by a nesting bomb"
    path = rng.choice(paths)
    parent, key = _resolve(doc, path[:-1]), path[-1] if path else None
    kind = rng.choice(["drop", "retype", "huge", "bomb", "empty", "null", "string", "negative"])
    if parent is None or key is None:
        return _bomb(rng), "root replaced by a nesting bomb"
    if kind == "drop" and isinstance(parent, dict):
        parent.pop(key, None)
    else:
        parent[key] = {
            "drop": None, "retype": rng.choice([[], {}, "x", 1, 1.5, True]),
            "huge": rng.choice([1 << 62, 10 ** 30, 1e308, 2 ** 64, -(1 << 63)]),
            "bomb": _bomb(rng), "empty": rng.choice([[], {}, ""]), "null": None,
            "string": "\x00\ud800" if rng.random() < 0.3 else "A" * rng.choice([1, 1000, 100_000]),
            "negative": -rng.choice([1, 2, 1 << 31]),
        }[kind]
    return doc, f"{kind} at {'/'.join(map(str, path)) or 'root'}"


def _bomb(rng: random.Random):
    return {"__bomb__": rng.choice([100, 1000, 100_000])}  # written as that many nested brackets


def _json_paths(doc, prefix=(), out=None, limit=4000) -> list[tuple]:
    out = [] if out is None else out
    if len(out) > limit:
        return out
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for k, v in items:
        out.append((*prefix, k))
        _json_paths(v, (*prefix, k), out, limit)
    return out


def _resolve(doc, path):
    for k in path:
        doc = doc[k]
    return doc


def dump_json(doc) -> bytes:
    """JSON text; a ``{"__bomb__": n}`` marker becomes n nested brackets (too deep for json.dumps)."""
    text = json.dumps(doc, allow_nan=True, default=str)
    while '{"__bomb__": ' in text:
        i = text.index('{"__bomb__": ')
        j = text.index("}", i)
        n = int(text[i + len('{"__bomb__": '):j])
        text = text[:i] + "[" * n + "]" * n + text[j + 1:]
    return text.encode("utf-8", errors="surrogatepass")


# --- zip archives (.pt2, .npz) ----------------------------------------------------------------------

def zip_entries(data: bytes) -> list[tuple[zipfile.ZipInfo, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return [(i, z.read(i)) for i in z.infolist()]


def write_zip(entries: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, payload in entries:
            z.writestr(zipfile.ZipInfo(name), payload)
    return buf.getvalue()


def non_utf8_name(data: bytes, name: str) -> bytes:
    """Rewrite entry ``name``'s bytes in the archive to invalid UTF-8 while its header says UTF-8."""
    raw = name.encode()
    bad = b"\xff\xfe" + raw[2:] if len(raw) > 2 else b"\xff" * len(raw)
    out = bytearray(data.replace(raw, bad))
    for sig, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # set the UTF-8 flag (bit 11) on every header
        start = 0
        while (i := out.find(sig, start)) >= 0:
            flags = struct.unpack_from("<H", out, i + flag_at)[0] | 0x800
            struct.pack_into("<H", out, i + flag_at, flags)
            start = i + 4
    return bytes(out)


def declared_size_bomb(data: bytes, rng: random.Random) -> Mutant:
    """An entry's uncompressed size in the central directory set huge (a zip bomb by declaration)."""
    out = bytearray(data)
    i = out.find(b"PK\x01\x02")
    if i < 0:
        return truncate(data, rng)
    value = rng.choice([1 << 31, 1 << 40, 0xFFFFFFFE])
    struct.pack_into("<I", out, i + 24, value & 0xFFFFFFFF)
    return bytes(out), f"central directory size set to {value:#x}"


# --- protobuf wire format (ONNX, Core ML specs) -------------------------------------------------------

def protobuf_lengths(data: bytes, max_fields: int = 20_000) -> list[tuple[int, int]]:
    """(offset, length) of every length prefix found by walking nested messages where they parse."""
    found: list[tuple[int, int]] = []

    def walk(start: int, end: int, depth: int) -> bool:
        pos = start
        while pos < end:
            key, pos = _varint(data, pos, end)
            if key is None:
                return False
            wt = key & 7
            if wt == 0:
                _, pos = _varint(data, pos, end)
                if pos is None:
                    return False
            elif wt == 2:
                at = pos
                size, pos = _varint(data, pos, end)
                if size is None or pos + size > end:
                    return False
                found.append((at, pos - at))
                if len(found) > max_fields:
                    return True
                if depth < 12 and size > 1:
                    walk(pos, pos + size, depth + 1)
                pos += size
            elif wt == 1:
                pos += 8
            elif wt == 5:
                pos += 4
            else:
                return False
        return pos == end

    walk(0, len(data), 0)
    return found


def _varint(buf: bytes, pos: int, end: int):
    """(value, next position) of the varint at ``pos`` (the codec's reader), or (None, None) where it breaks."""
    from edgelift.core.onnx_proto import _varint as read_varint
    from edgelift.errors import ModelFormatError

    try:
        return read_varint(memoryview(buf)[:end], pos)
    except ModelFormatError:
        return None, None


def protobuf_length_set(data: bytes, rng: random.Random) -> Mutant:
    """A nested message's or string's length prefix rewritten (same width) to a boundary value."""
    lengths = protobuf_lengths(data)
    if not lengths:
        return word_set(data, rng)
    at, width = rng.choice(lengths)
    value = rng.choice([0, 1, (1 << (7 * width)) - 1, rng.randrange(1 << (7 * width))])
    enc = bytearray()
    for i in range(width):
        enc.append((value >> (7 * i)) & 0x7F | (0x80 if i < width - 1 else 0))
    return data[:at] + bytes(enc) + data[at + width:], f"length prefix at {at} set to {value}"


def protobuf_text_corrupt(data: bytes, rng: random.Random) -> Mutant:
    """A string field (a name, an op type, a path) made invalid UTF-8 or given control characters, lengths kept."""
    texts = []
    for at, width in protobuf_lengths(data):
        size, start = _varint(data, at, len(data))
        if size and 2 <= size <= 200 and all(32 <= b < 127 for b in data[start:start + size]):
            texts.append((start, size))
    if not texts:
        return bit_flips(data, rng)
    start, size = rng.choice(texts)
    i = start + rng.randrange(size)
    value = rng.choice([b"\xff", b"\xc3", b"\n", b"\x00", b"\x1b"])
    return data[:i] + value + data[i + 1:], f"text at {start} (byte {i - start} of {size}) set to {value!r}"
