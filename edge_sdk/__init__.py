"""edge-sdk: convert, run and profile trained models on phones, single-board computers and Jetson.

Public API::

    import edge_sdk
    result = edge_sdk.convert("model.pt2", quantize=["none", "int8"], calibration="calib.npz", out="out/")
    print(result.artifact("int8").parity.accuracy)
    report = edge_sdk.inspect("out/model.int8.onnx")
    with edge_sdk.load("out/model.int8.onnx") as model:      # ONNX, TFLite, Core ML, GGUF
        outputs = model.run({"x": batch})
    report = edge_sdk.profile("out/model.int8.onnx", edge_sdk.ProfileOptions(runs=200))
    report.write_html("int8.html")

``import edge_sdk`` loads neither torch nor onnx: converters import them when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import errors
from ._version import __version__

if TYPE_CHECKING:  # pragma: no cover
    from .converters.api import convert
    from .converters.inspect import InspectReport, inspect
    from .converters.report import ConversionResult
    from .profilers.profile import ProfileOptions, profile
    from .runtimes.model import Model, load

__all__ = ["__version__", "errors", "convert", "inspect", "load", "Model", "ConversionResult", "InspectReport",
           "profile", "ProfileOptions"]

_LAZY = {
    "convert": ("edge_sdk.converters.api", "convert"),
    "inspect": ("edge_sdk.converters.inspect", "inspect"),
    "InspectReport": ("edge_sdk.converters.inspect", "InspectReport"),
    "ConversionResult": ("edge_sdk.converters.report", "ConversionResult"),
    "load": ("edge_sdk.runtimes.model", "load"),
    "Model": ("edge_sdk.runtimes.model", "Model"),
    "profile": ("edge_sdk.profilers.profile", "profile"),
    "ProfileOptions": ("edge_sdk.profilers.profile", "ProfileOptions"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'edge_sdk' has no attribute '{name}'")
