"""edgelift: convert, run and profile trained models on phones, single-board computers and Jetson.

Public API::

    import edgelift
    result = edgelift.convert("model.pt2", quantize=["none", "int8"], calibration="calib.npz", out="out/")
    print(result.artifact("int8").parity.accuracy)
    report = edgelift.inspect("out/model.int8.onnx")
    with edgelift.load("out/model.int8.onnx") as model:      # ONNX, TFLite, Core ML, GGUF
        outputs = model.run({"x": batch})
    report = edgelift.profile("out/model.int8.onnx", edgelift.ProfileOptions(runs=200))
    report.write_html("int8.html")

``import edgelift`` loads neither torch nor onnx: converters import them when called.
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
    "convert": ("edgelift.converters.api", "convert"),
    "inspect": ("edgelift.converters.inspect", "inspect"),
    "InspectReport": ("edgelift.converters.inspect", "InspectReport"),
    "ConversionResult": ("edgelift.converters.report", "ConversionResult"),
    "load": ("edgelift.runtimes.model", "load"),
    "Model": ("edgelift.runtimes.model", "Model"),
    "profile": ("edgelift.profilers.profile", "profile"),
    "ProfileOptions": ("edgelift.profilers.profile", "ProfileOptions"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'edgelift' has no attribute '{name}'")
