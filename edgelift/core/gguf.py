"""A bounded reader of GGUF headers: metadata, tensor table, and checks that the file is whole.

It runs before any native loader sees a file, so a truncated or hostile GGUF gives a clear
ModelFormatError instead of a crash. Every length is checked against the bytes left in the file
before anything is read or allocated.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from ..errors import ModelFormatError, shown

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
MAX_STRING_BYTES = 64 << 20
# Limits a real file never reaches but a hostile one would use to stall or abort a native reader:
# llama.cpp walks the metadata quadratically (100,000 keys: > 30 s) and asserts that tensor data is
# 32-byte aligned (general.alignment 1, 2 or 8 aborts the process).
MAX_METADATA_KEYS = 4096
MAX_TENSORS = 1 << 16
MAX_KEY_BYTES = 1 << 16
TENSOR_DATA_ALIGNMENT = 32  # ggml's TENSOR_ALIGNMENT: general.alignment must be a multiple of it
MAX_ALIGNMENT = 1 << 20
MAX_ELEMENTS = 1 << 40  # per tensor: ~1e12 weights, far beyond any model, and no int64 overflow

# value type id -> struct format (scalars)
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9

# ggml type id -> (name, block size in elements, bytes per block), as in gguf-py's GGML_QUANT_SIZES
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292), 16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
    26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17),
}


@dataclass
class GGUFTensorInfo:
    name: str
    shape: tuple[int, ...]  # ggml order (fastest-varying first)
    ggml_type: int
    offset: int  # relative to the data section
    nbytes: int

    @property
    def type_name(self) -> str:
        return GGML_TYPES.get(self.ggml_type, (f"type{self.ggml_type}", 0, 0))[0]


@dataclass
class GGUFInfo:
    path: Path
    version: int
    metadata: dict[str, object]  # scalars and strings; arrays as {"array": type, "length": n}
    tensors: list[GGUFTensorInfo] = field(default_factory=list)
    data_offset: int = 0
    value_types: dict[str, int] = field(default_factory=dict)  # key -> GGUF value type id (arrays: 9)

    @property
    def architecture(self) -> str | None:
        arch = self.metadata.get("general.architecture")
        return arch if isinstance(arch, str) else None


class _Reader:
    def __init__(self, f: BinaryIO, size: int, path: Path) -> None:
        self.f, self.size, self.path = f, size, path

    def left(self) -> int:
        return self.size - self.f.tell()

    def read(self, n: int) -> bytes:
        if n < 0 or n > self.left():
            raise ModelFormatError(
                f"{self.path} is truncated or corrupted: needs {n} bytes at offset {self.f.tell()}, "
                f"{self.left()} left; download or convert it again")
        return self.f.read(n)

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def string(self, limit: int = MAX_STRING_BYTES, what: str = "string") -> str:
        n = self.unpack("<Q")
        if n > limit:
            raise ModelFormatError(f"{self.path}: a {n}-byte {what} in the header (limit {limit}); the file is corrupted")
        return self.read(n).decode("utf-8", errors="replace")

    def _string_items(self, count: int) -> list[bytes]:
        """``count`` length-prefixed strings, parsed from chunks of the file (a vocabulary is ~100k of them:
        two checked reads each would cost more than the rest of the header), each length checked against
        the limit and what is left of the file before it is used."""
        start, left = self.f.tell(), self.left()
        buf, pos, consumed, items = b"", 0, 0, []  # consumed: bytes of the array before buf[0]

        def need(k: int) -> None:
            nonlocal buf, pos, consumed
            have = len(buf) - pos
            if have >= k:
                return
            read_so_far = consumed + len(buf)
            if read_so_far + (k - have) > left:
                raise ModelFormatError(f"{self.path} is truncated or corrupted: a string array runs past the end of "
                                       "the file; download or convert it again")
            chunk = self.f.read(max(k - have, min(1 << 20, left - read_so_far)))
            buf, consumed, pos = buf[pos:] + chunk, consumed + pos, 0

        for _ in range(count):
            need(8)
            (n,) = struct.unpack_from("<Q", buf, pos)
            if n > MAX_STRING_BYTES:
                raise ModelFormatError(f"{self.path}: a {n}-byte string in an array; the file is corrupted")
            need(8 + n)
            items.append(buf[pos + 8:pos + 8 + n])
            pos += 8 + n
        self.f.seek(start + consumed + pos)
        return items

    def value(self, vtype: int, keep: bool = False, collect: bool = False):
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, count = self.unpack("<I"), self.unpack("<Q")
            min_size = struct.calcsize(_SCALARS[etype]) if etype in _SCALARS else 8
            if etype not in _SCALARS and etype != _STRING or count * min_size > self.left():
                raise ModelFormatError(f"{self.path}: an array of {count} items (type {etype}) does not fit the file")
            if etype in _SCALARS:
                raw = self.read(count * min_size)  # skipped unless asked for: not needed to validate
                if collect:
                    return {"array": etype, "length": count,
                            "values": list(struct.unpack(f"<{count}{_SCALARS[etype][1]}", raw))}
                return {"array": etype, "length": count}
            items = self._string_items(count)
            out = {"array": etype, "length": count,
                   "duplicates": count - len(set(items)) if keep else 0}
            if collect:
                out["values"] = [item.decode("utf-8", errors="replace") for item in items]
            return out
        raise ModelFormatError(f"{self.path}: unknown metadata value type {vtype}; the file is corrupted")


def read_gguf_info(path: str | Path, arrays: tuple[str, ...] = ()) -> GGUFInfo:
    """Parse and validate a GGUF file's header and tensor table without loading tensor data;
    the metadata arrays named in ``arrays`` (e.g. the vocabulary) keep their values (``"*"``: all)."""
    p = Path(path)
    size = p.stat().st_size
    with p.open("rb") as f:
        r = _Reader(f, size, p)
        if size < 4 or r.read(4) != MAGIC:
            raise ModelFormatError(f"{p} is not a GGUF file (bad magic)")
        version = r.unpack("<I")
        if version not in (2, 3):
            raise ModelFormatError(f"{p}: GGUF version {version} is not supported (2 or 3)")
        n_tensors, n_kv = r.unpack("<Q"), r.unpack("<Q")
        if n_tensors > min(MAX_TENSORS, size // 24) or n_kv > min(MAX_METADATA_KEYS, size // 12):
            raise ModelFormatError(f"{p}: header claims {n_tensors} tensors and {n_kv} metadata keys (limits "
                                   f"{MAX_TENSORS} and {MAX_METADATA_KEYS}); the file is corrupted")
        meta: dict[str, object] = {}
        value_types: dict[str, int] = {}
        for _ in range(n_kv):
            key = r.string(MAX_KEY_BYTES, "metadata key")
            if key in meta:
                raise ModelFormatError(f"{p}: metadata key '{shown(key)}' appears twice; the file is corrupted")
            vtype = value_types[key] = r.unpack("<I")
            meta[key] = r.value(vtype, keep=key == "tokenizer.ggml.tokens", collect=key in arrays or "*" in arrays)
        tensors = []
        names: set[str] = set()
        for _ in range(n_tensors):
            name = r.string(MAX_KEY_BYTES, "tensor name")
            if name in names:
                raise ModelFormatError(f"{p}: tensor '{shown(name)}' appears twice; the file is corrupted")
            names.add(name)
            n_dims = r.unpack("<I")
            if not 1 <= n_dims <= MAX_DIMS:
                raise ModelFormatError(f"{p}: tensor '{shown(name)}' has {n_dims} dims (1 to {MAX_DIMS})")
            shape = tuple(r.unpack("<Q") for _ in range(n_dims))
            gtype, offset = r.unpack("<I"), r.unpack("<Q")
            if gtype not in GGML_TYPES:
                raise ModelFormatError(f"{p}: tensor '{shown(name)}' has unknown ggml type {gtype}")
            _, block, block_bytes = GGML_TYPES[gtype]
            n = 1
            for d in shape:
                n *= d
            if 0 in shape or n > MAX_ELEMENTS:
                raise ModelFormatError(f"{p}: tensor '{shown(name)}' has shape {list(shape)}; the file is corrupted")
            if shape[0] % block:
                raise ModelFormatError(f"{p}: tensor '{shown(name)}' row of {shape[0]} is not a multiple of its block {block}")
            tensors.append(GGUFTensorInfo(name, shape, gtype, offset, n // block * block_bytes))
        align = meta.get("general.alignment", DEFAULT_ALIGNMENT)
        if isinstance(align, bool) or not isinstance(align, int) or align <= 0 or align % TENSOR_DATA_ALIGNMENT \
                or align > MAX_ALIGNMENT:
            raise ModelFormatError(f"{p}: general.alignment {align!r} is not a multiple of {TENSOR_DATA_ALIGNMENT} "
                                   f"(up to {MAX_ALIGNMENT}); llama.cpp needs 32-byte aligned tensor data")
        data_offset = (f.tell() + align - 1) // align * align
    for t in tensors:
        if t.offset % align:
            raise ModelFormatError(f"{p}: tensor '{shown(t.name)}' starts at offset {t.offset}, not a multiple of the "
                                   f"alignment {align}; the file is corrupted")
        if data_offset + t.offset + t.nbytes > size:
            raise ModelFormatError(
                f"{p} is truncated: tensor '{shown(t.name)}' ends at byte {data_offset + t.offset + t.nbytes}, "
                f"the file has {size}; download or convert it again")
    spans = sorted((t.offset, t.offset + t.nbytes, t.name) for t in tensors)
    for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
        if start < end:
            raise ModelFormatError(f"{p}: tensors '{shown(a)}' and '{shown(b)}' overlap in the data section; the file is corrupted")
    return GGUFInfo(p, version, meta, tensors, data_offset, value_types)
