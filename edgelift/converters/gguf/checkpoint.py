"""A Hugging Face checkpoint directory read tensor by tensor, without torch.

``*.safetensors`` files (sharded through ``model.safetensors.index.json`` too) are parsed here: an
8-byte header length, a JSON header, then raw little-endian data. Every header entry is checked
against the file size before anything is read, so a truncated or hostile file gives a
ModelFormatError, and tensors are memory-mapped, so converting never holds the whole model in RAM.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...errors import ModelFormatError, SourceError, shown

MAX_HEADER_BYTES = 100 << 20
_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def read_bytes(path: Path, offset: int, nbytes: int, what: str) -> np.ndarray:
    """``nbytes`` of ``path`` at ``offset`` in a fresh buffer (not a memory map: its pages would stay resident
    until it closes, so converting tensor by tensor would end holding the whole file); a file that ends
    first is a ModelFormatError naming ``what``."""
    raw = np.fromfile(path, np.uint8, count=nbytes, offset=offset)
    if raw.size != nbytes:
        raise ModelFormatError(f"{path} ends inside tensor '{shown(what)}'; the file is truncated")
    return raw


@dataclass
class TensorRef:
    """Where one tensor's bytes lie; ``load()`` reads them and returns float32 (bf16 widened)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: "SafetensorsFile"
    start: int
    end: int

    def load(self) -> np.ndarray:
        raw = read_bytes(self.file.path, self.file.data_start + self.start, self.end - self.start, self.name)
        a = raw.view(_DTYPES[self.dtype]).reshape(self.shape)
        if self.dtype == "BF16":
            return (a.astype(np.uint32) << 16).view(np.float32)
        return a.astype(np.float32) if a.dtype.kind == "f" else a


@dataclass
class SafetensorsFile:
    path: Path
    data_start: int = 0
    tensors: dict[str, TensorRef] = field(default_factory=dict)


def read_safetensors(path: Path) -> SafetensorsFile:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelFormatError(f"{path} is not a safetensors file (shorter than its 8-byte header length)")
        (n,) = struct.unpack("<Q", head)
        if n > min(MAX_HEADER_BYTES, size - 8):
            raise ModelFormatError(f"{path}: header length {n} exceeds the file ({size} bytes); the file is "
                                   "truncated or not safetensors")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelFormatError(f"{path}: safetensors header is not JSON ({e})") from e
    sf = SafetensorsFile(path, 8 + n)
    data_bytes = size - 8 - n
    if not isinstance(header, dict):
        raise ModelFormatError(f"{path}: safetensors header is not a JSON object")
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = entry["dtype"], tuple(int(d) for d in entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError) as e:
            raise ModelFormatError(f"{path}: malformed entry for tensor '{name}'") from e
        if dtype not in _DTYPES:
            raise ModelFormatError(f"{path}: tensor '{name}' has unsupported dtype {dtype}")
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if any(d < 0 for d in shape) or not 0 <= start <= end <= data_bytes \
                or end - start != count * np.dtype(_DTYPES[dtype]).itemsize:
            raise ModelFormatError(f"{path}: tensor '{name}' lies outside the file or has the wrong size; "
                                   "the file is truncated or corrupt")
        sf.tensors[name] = TensorRef(name, dtype, shape, sf, int(start), int(end))
    return sf


@dataclass
class HFCheckpoint:
    """config.json, tokenizer files and the tensors of a Hugging Face model directory."""

    path: Path
    config: dict
    tensors: dict[str, TensorRef]

    @property
    def architecture(self) -> str:
        archs = self.config.get("architectures") or []
        return archs[0] if archs else self.config.get("model_type", "?")

    def json(self, name: str) -> dict | None:
        p = self.path / name
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelFormatError(f"{p} is not valid JSON ({e})") from e

    def parameter_count(self) -> int:
        return sum(int(np.prod(t.shape, dtype=np.int64)) for t in self.tensors.values())


def is_hf_checkpoint(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def read_checkpoint(path: str | Path) -> HFCheckpoint:
    path = Path(path)
    if not is_hf_checkpoint(path):
        raise SourceError(f"{path} is not a Hugging Face checkpoint directory (no config.json)")
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        files = sorted(set(weight_map.values()))
    else:
        files = sorted(p.name for p in path.glob("*.safetensors"))
    if not files:
        bins = sorted(p.name for p in path.glob("pytorch_model*.bin"))
        hint = " (pytorch_model.bin found: re-save it with save_pretrained(safe_serialization=True))" if bins else ""
        raise SourceError(f"{path} holds no *.safetensors weights{hint}")
    tensors: dict[str, TensorRef] = {}
    for name in files:
        f = path / name
        if not f.is_file() or f.resolve().parent != path.resolve():
            raise SourceError(f"shard {name} listed in {index.name} is missing from {path}")
        tensors.update(read_safetensors(f).tensors)
    return HFCheckpoint(path, config, tensors)
