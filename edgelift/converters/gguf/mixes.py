"""GGUF file types and the per-tensor type each one gives, following ``llama-quantize``.

A file type (``Q4_K_M``, ``Q8_0``, ...) names a default tensor type; llama.cpp then raises some
tensors by role: the output matrix (or the token embedding when it doubles as the output) to Q6_K,
half of the attention-V and FFN-down matrices to Q6_K in the ``_M`` mixes (``use_more_bits``), the
first ones to Q5_K in ``Q4_K_S``; and a tensor whose rows do not split into whole blocks falls back
(Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, then F16). ``pure`` types (``Q4_K``, ``Q5_K``) skip the
role rules, like ``llama-quantize --pure``. Tensors are visited in llama.cpp's order (block number,
then name), which is what its layer counters count in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from . import qtypes


@dataclass(frozen=True)
class FileType:
    name: str
    ftype: int  # general.file_type (LLAMA_FTYPE_*)
    default: str  # default tensor type
    pure: bool = False


FILE_TYPES = {ft.name: ft for ft in [
    FileType("F32", 0, "F32"), FileType("F16", 1, "F16"), FileType("BF16", 32, "BF16"),
    FileType("Q8_0", 7, "Q8_0"), FileType("Q4_0", 2, "Q4_0"), FileType("Q4_1", 3, "Q4_1"),
    FileType("Q5_0", 8, "Q5_0"), FileType("Q5_1", 9, "Q5_1"),
    FileType("Q4_K_S", 14, "Q4_K"), FileType("Q4_K_M", 15, "Q4_K"), FileType("Q5_K_S", 16, "Q5_K"),
    FileType("Q5_K_M", 17, "Q5_K"), FileType("Q6_K", 18, "Q6_K"),
    FileType("Q4_K", 14, "Q4_K", pure=True), FileType("Q5_K", 16, "Q5_K", pure=True),
]}
UNQUANTIZED = ("F32", "F16", "BF16")
FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
_NOT_QUANTIZED = ("_norm.weight", "ffn_gate_inp.weight")


def file_type(name: str) -> FileType:
    key = name.upper()
    if key not in FILE_TYPES:
        from ...errors import QuantizationError

        raise QuantizationError(f"GGUF type '{name}' unknown; choose one of: {', '.join(FILE_TYPES)}")
    return FILE_TYPES[key]


def quantizable(name: str, shape: tuple[int, ...]) -> bool:
    """Whether llama-quantize touches the tensor at all (1-D tensors, norms, position tables: never)."""
    dims = list(shape)
    while len(dims) > 1 and dims[0] == 1:  # ggml_n_dims: trailing (numpy: leading) 1s do not count
        dims.pop(0)
    return len(dims) >= 2 and name.endswith("weight") and not any(s in name for s in _NOT_QUANTIZED) \
        and name not in ("position_embd.weight", "token_types.weight")


def use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def llama_order(names: list[str]) -> list[str]:
    """llama.cpp's tensor order: non-block tensors first, then by block number; by name within."""
    def key(n: str):
        m = re.match(r"blk\.(\d+)\.", n)
        return (int(m.group(1)) if m else -1, n.encode())

    return sorted(names, key=key)


def plan_types(shapes: dict[str, tuple[int, ...]], ft: FileType, n_layer: int,
               source_types: dict[str, str] | None = None) -> dict[str, tuple[str, str | None]]:
    """Tensor type per GGUF tensor name (numpy-order shapes): name -> (type, why it differs from the default)."""
    tied = "output.weight" not in shapes
    i_v = i_down = 0
    out: dict[str, tuple[str, str | None]] = {}
    for name in llama_order(list(shapes)):
        shape = shapes[name]
        row = shape[-1]
        if not quantizable(name, shape):
            keep = (source_types or {}).get(name, "F32")
            out[name] = (keep if keep in UNQUANTIZED else "F32", None)
            continue
        t, why = ft.default, None
        if ft.default in UNQUANTIZED:
            out[name] = (t, None)
            continue
        if not ft.pure:
            t, why = _by_role(name, row, ft, t, tied, i_v, i_down, n_layer)
            if "attn_v.weight" in name or "attn_qkv.weight" in name:
                i_v += 1
            elif "ffn_down" in name:
                i_down += 1
        if not qtypes.fits(t, row):
            fb = FALLBACK.get(t, "F16")
            if not qtypes.fits(fb, row):
                fb = "F16"
            why = f"{row} columns do not split into {t} blocks of {qtypes.block_size(t)[0]}: falls back to {fb}"
            t = fb
        out[name] = (t, why)
    return out


def _by_role(name, row, ft, t, tied, i_v, i_down, n_layer):
    if name == "output.weight" or (tied and name == "token_embd.weight"):
        if not qtypes.fits(t, row):
            return "Q8_0", f"output matrix with {row} columns: Q8_0"
        return ("Q6_K", "output matrix: Q6_K") if t != "Q8_0" else (t, None)
    if "attn_v.weight" in name or "attn_qkv.weight" in name:
        if ft.name in ("Q4_K_M", "Q5_K_M") and use_more_bits(i_v, n_layer):
            return "Q6_K", "attention V in a more-bits layer: Q6_K"
        if ft.name == "Q4_K_S" and i_v < 4:
            return "Q5_K", "attention V in the first 4 layers: Q5_K"
    elif "ffn_down" in name:
        if ft.name in ("Q4_K_M", "Q5_K_M") and use_more_bits(i_down, n_layer):
            return "Q6_K", "FFN down in a more-bits layer: Q6_K"
        if ft.name == "Q4_K_S" and i_down < n_layer // 8:
            return "Q5_K", "FFN down in the first 1/8 of layers: Q5_K"
    return t, None
