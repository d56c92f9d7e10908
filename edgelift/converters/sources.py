"""Model sources the converter accepts, detected from the argument.

- a ``torch.nn.Module`` with example inputs (Python API);
- a ``torch.export`` program saved as ``.pt2`` — checked so that loading it unpickles nothing;
- ``module.path:factory`` (or ``path/to/file.py:factory``) plus ``.safetensors`` weights;
- an ``.onnx`` file (re-quantize / re-export).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.formats import ModelFormat, detect_format
from ..errors import ModelFormatError, ModelNotFoundError, SourceError, require


@dataclass
class TorchSource:
    """A PyTorch model to export. ``exported`` is set for .pt2 programs."""

    module: Any
    example_inputs: tuple
    kind: str  # "module" | "pt2" | "factory"
    name: str
    path: str | None = None
    exported: Any = None
    notes: list[str] = field(default_factory=list)

    def parameter_count(self) -> int:
        """Trainable parameters (not buffers such as BatchNorm running statistics)."""
        if self.exported is not None:
            sd = self.exported.state_dict
            return int(sum(sd[k].numel() for k in self.exported.graph_signature.parameters))
        return int(sum(p.numel() for p in self.module.parameters()))


@dataclass
class OnnxSource:
    path: Path
    model: Any  # onnx.ModelProto
    name: str
    kind: str = "onnx"


Source = TorchSource | OnnxSource


def is_torch_module(obj: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def resolve_source(
    source: Any,
    *,
    example_inputs: tuple | None = None,
    weights: str | Path | None = None,
    name: str | None = None,
) -> Source:
    """Turn the user's argument into a loaded source, raising typed errors for bad input."""
    if is_torch_module(source):
        if example_inputs is None:
            raise SourceError("a torch.nn.Module source needs example_inputs=(tensor, ...)")
        return TorchSource(source.eval(), _as_tuple(example_inputs), "module",
                           name or type(source).__name__.lower())
    if not isinstance(source, (str, Path)):
        raise SourceError(
            f"cannot convert a {type(source).__name__}: pass a torch.nn.Module, a .pt2 or .onnx "
            "path, or 'module.path:factory'"
        )
    text = str(source)
    p = Path(text)
    if not p.exists() and _looks_like_factory(text):
        return load_factory(text, weights, example_inputs, name)
    fmt = detect_format(p)
    if weights is not None:
        raise SourceError("--weights applies only to a 'module.path:factory' source")
    if fmt is ModelFormat.PT2:
        return load_pt2(p, name)
    if fmt is ModelFormat.ONNX:
        from .onnx_graph import load_model

        return OnnxSource(p, load_model(p), name or _stem(p))
    raise SourceError(f"{p}: converting from {fmt.value} is not supported yet; pass .onnx or .pt2")


def _stem(p: Path) -> str:
    return p.name.split(".")[0] or "model"


def _as_tuple(x: Any) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _looks_like_factory(text: str) -> bool:
    mod, sep, attr = text.rpartition(":")
    if not (sep and mod and attr.isidentifier()):
        return False
    return mod.endswith(".py") or all(part.isidentifier() for part in mod.split("."))


# --- .pt2 --------------------------------------------------------------------------------------


def load_pt2(path: Path, name: str | None = None) -> TorchSource:
    """A ``.pt2`` program, loaded so that nothing in the file runs (see ``converters/pt2.py``)."""
    from .pt2 import load_exported_program

    program = load_exported_program(path)
    ep = program.exported
    try:
        module = ep.module()
        example = _pt2_example_inputs(ep, program.example_inputs)
    except Exception as e:  # a program torch deserialized but cannot turn back into a module
        text = " ".join(str(e).split())[:160] or type(e).__name__
        raise ModelFormatError(f"{path} is not a usable torch.export program ({type(e).__name__}: {text})") from e
    return TorchSource(module, example, "pt2", name or _stem(path), str(path), exported=ep)


def _pt2_example_inputs(ep, saved: tuple | None) -> tuple:
    """Example inputs stored in the program, else zeros shaped like its input placeholders."""
    import torch

    if saved is not None:
        args, kwargs = saved
        if not kwargs and all(isinstance(a, torch.Tensor) for a in args):
            return tuple(args)
    user = set(ep.graph_signature.user_inputs)
    out = []
    for node in ep.graph.nodes:
        if node.op == "placeholder" and node.name in user:
            val = node.meta.get("val")
            shape = [int(d) if isinstance(d, int) else 2 for d in val.shape]
            out.append(torch.zeros(shape, dtype=val.dtype))
    return tuple(out)


# --- module.path:factory -----------------------------------------------------------------------


def load_factory(
    spec: str,
    weights: str | Path | None,
    example_inputs: tuple | None,
    name: str | None,
) -> TorchSource:
    torch = require("torch", "convert", "Building a model from a factory")
    mod_name, _, attr = spec.rpartition(":")
    if mod_name.endswith(".py") and not Path(mod_name).is_file():
        raise ModelNotFoundError(f"factory file {mod_name} does not exist; check the path")
    try:
        if mod_name.endswith(".py"):
            file = Path(mod_name)
            mspec = importlib.util.spec_from_file_location(f"_edge_factory_{file.stem}", file)
            module = importlib.util.module_from_spec(mspec)
            mspec.loader.exec_module(module)
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))
            module = importlib.import_module(mod_name)
    except Exception as e:
        raise SourceError(f"cannot import '{mod_name}' for factory {spec}: {type(e).__name__}: {e}") from e
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise SourceError(f"'{mod_name}' has no callable '{attr}'; check the factory name in {spec}")
    try:
        model = factory()
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise SourceError(f"factory {spec} raised {type(e).__name__}: {first}") from e
    if not isinstance(model, torch.nn.Module):
        raise SourceError(f"factory {spec} returned {type(model).__name__}, not a torch.nn.Module")
    notes = []
    if weights is not None:
        load_safetensors_into(model, Path(weights))
        notes.append(f"weights: {weights}")
    else:
        notes.append("no --weights given: the factory's initial weights were converted")
    if example_inputs is None:
        raise SourceError(
            f"factory {spec} needs input shapes: pass --input-shape NAME=1x3x224x224 or --calibration FILE.npz"
        )
    return TorchSource(model.eval(), _as_tuple(example_inputs), "factory", name or attr, spec, notes=notes)


def load_safetensors_into(model, path: Path) -> None:
    require("safetensors", "convert", "Loading .safetensors weights")
    from safetensors.torch import load_file

    if not path.is_file():
        raise ModelNotFoundError(f"weights file {path} does not exist; check --weights")
    try:
        state = load_file(str(path))
    except Exception as e:
        raise ModelFormatError(
            f"{path} is not a valid .safetensors file ({' '.join(str(e).split())[:120]}); save it with "
            "safetensors.torch.save_file"
        ) from e
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # size mismatches
        detail = " ".join(str(e).split())[:200]
        raise SourceError(f"{path} does not fit the factory's model: {detail}") from e
    if result.missing_keys or result.unexpected_keys:
        raise SourceError(
            f"{path} does not fit the factory's model: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )


def example_inputs_from_shapes(shapes: dict[str, tuple[int | None, ...]]) -> tuple:
    import torch

    if any(d is None for shape in shapes.values() for d in shape):
        raise SourceError("a factory source needs every --input-shape dim as a size ('?' applies to ONNX sources); "
                          "the exported batch axis is dynamic anyway")
    return tuple(torch.zeros(s) for s in shapes.values())


def example_inputs_from_arrays(arrays: dict[str, np.ndarray], n: int = 2) -> tuple:
    import torch

    def example(a: np.ndarray):
        a = np.ascontiguousarray(a[:n])
        return torch.from_numpy(a.astype(np.float32) if np.issubdtype(a.dtype, np.floating) else a)

    return tuple(example(a) for a in arrays.values())
