"""Detect a model file's format from its content, not its extension.

Readers here look at a bounded prefix of the file, so a hostile or huge file costs nothing.
"""

from __future__ import annotations

import zipfile
from enum import Enum
from pathlib import Path

from ..errors import ModelFormatError, ModelNotFoundError


class ModelFormat(str, Enum):
    ONNX = "onnx"
    PT2 = "pt2"
    TFLITE = "tflite"
    GGUF = "gguf"
    COREML = "coreml"


_ZIP_MAGIC = b"PK\x03\x04"
_GGUF_MAGIC = b"GGUF"
_TFLITE_IDENT = b"TFL3"  # flatbuffer file identifier at bytes 4..8


def _looks_like_onnx(head: bytes) -> bool:
    # An ONNX ModelProto serialized by onnx/protobuf starts with field 1 (ir_version, varint:
    # tag 0x08) or, for hand-built protos, field 2..8 as length-delimited/varint tags.
    return len(head) > 2 and head[0] in (0x08, 0x12, 0x1A, 0x22, 0x2A, 0x32, 0x3A, 0x40)


def detect_format(path: str | Path) -> ModelFormat:
    """Return the format of the model at ``path``, raising a typed error when it is none we know."""
    p = Path(path)
    if not p.exists():
        raise ModelNotFoundError(f"{p}: no such file; check the path")
    if p.is_dir():
        if (p / "Manifest.json").is_file():  # .mlpackage
            return ModelFormat.COREML
        if p.suffix == ".mlpackage":
            raise ModelFormatError(f"{p} is not a valid .mlpackage (no Manifest.json); convert it again")
        raise ModelFormatError(
            f"{p} is a directory, not a model: pass an .onnx or .pt2 file (or module.path:factory)"
        )
    with p.open("rb") as f:
        head = f.read(16)
    if len(head) == 0:
        raise ModelFormatError(f"{p} is empty: re-export or re-download the model")
    if head.startswith(_ZIP_MAGIC):
        if _is_pt2_archive(p):
            return ModelFormat.PT2
        raise ModelFormatError(
            f"{p} is a zip archive but not a torch.export .pt2 program: save it with torch.export.save"
        )
    if head.startswith(_GGUF_MAGIC):
        return ModelFormat.GGUF
    if head[4:8] == _TFLITE_IDENT:
        return ModelFormat.TFLITE
    if p.suffix == ".mlmodel":  # a protobuf like ONNX: only the name tells them apart
        return ModelFormat.COREML
    if _looks_like_onnx(head):
        return ModelFormat.ONNX
    raise ModelFormatError(
        f"{p}: unrecognised model format (not ONNX, .pt2, TFLite or GGUF); check the file"
    )


def _is_pt2_archive(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            if names and all(n.endswith(".npy") for n in names):
                raise ModelFormatError(f"{path} is a NumPy .npz archive (data, not a model): pass it with --input, "
                                       "--calibration or --validation, and give the model file as the argument")
            return any(n.endswith("archive_format") for n in names)
    except (zipfile.BadZipFile, OSError, UnicodeDecodeError, ValueError, NotImplementedError, RuntimeError) as e:
        raise ModelFormatError(
            f"{path} is a truncated or corrupted .pt2 archive ({e}); save it again"
        ) from e
