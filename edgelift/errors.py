"""Typed exceptions of the public API.

Every error edgelift raises on bad input derives from :class:`EdgeError`. Its message is one
line that says what is wrong and what to do; the CLI prints it and exits with code 2.
"""

from __future__ import annotations


class EdgeError(Exception):
    """Base class: bad input or an unmet requirement, with a one-line, actionable message.

    The message is normalized here, once: whitespace runs (newlines from a library's error text) become one
    space and other control characters are escaped, so text quoted from a hostile file cannot break the line."""

    exit_code = 2

    def __init__(self, message: object = "", *args: object) -> None:
        text = " ".join(str(message).split())
        super().__init__("".join(c if c.isprintable() else repr(c)[1:-1] for c in text), *args)


class ModelNotFoundError(EdgeError, FileNotFoundError):
    """The model path does not exist."""


class ModelFormatError(EdgeError):
    """The file is not a model of the expected format, or it is truncated or corrupted."""


class SourceError(EdgeError):
    """A model source could not be built: a factory that fails, weights that do not fit it."""


class UnsupportedOperatorError(EdgeError):
    """The model uses operators the target cannot express. ``nodes`` lists (name, op_type)."""

    def __init__(self, message: str, nodes: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.nodes = list(nodes or [])


class CalibrationError(EdgeError):
    """Calibration/validation data is missing or does not match the model's inputs."""


class ShapeError(EdgeError):
    """An input dim the model leaves symbolic has no size from --input-shape or data, or a given size
    contradicts the model."""


class ParityError(EdgeError):
    """An artifact missed its parity threshold. ``result`` is the conversion's report (failed artifacts
    marked); the CLI exits with :attr:`exit_code` 3, distinct from bad input (2)."""

    exit_code = 3

    def __init__(self, message: str, result=None) -> None:
        super().__init__(message)
        self.result = result


class InvalidOptionError(EdgeError):
    """An option value that is not one of the valid choices (the message lists them)."""


class QuantizationError(InvalidOptionError):
    """An unknown quantization mode or an option that does not apply to it."""


class ConversionError(EdgeError):
    """The exporter or a graph pass failed on an otherwise valid model."""


class OutputError(EdgeError):
    """The output location cannot be written."""


class IncompatibleBackendError(EdgeError):
    """The backend is installed but known to fail or give wrong results for this model/setup."""


class BackendUnavailableError(EdgeError):
    """The backend cannot run on this platform (e.g. Core ML off Apple systems)."""


class InputMismatchError(EdgeError, ValueError):
    """Feeds whose names, shapes or dtypes do not match the model's signature."""


class InferenceError(EdgeError, RuntimeError):
    """The backend failed while running a model that loaded (the message carries its reason)."""


class ModelClosedError(EdgeError):
    """``run`` on a model after ``close()``."""


class MissingDependencyError(EdgeError, ImportError):
    """An optional package is not installed; the message names the extra that provides it."""


def shown(text: object, limit: int = 80) -> str:
    """Text from a file (a tensor name, a key, a path inside an archive) fit for a one-line message:
    control characters and invalid UTF-8 escaped, long text cut, so a hostile name cannot break the line
    or the terminal."""
    s = str(text)
    cut = s[:limit]
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in cut)
    return out + ("..." if len(s) > limit else "")


def install_hint(extra: str) -> str:
    """How to add an extra without resolving our package by name on a registry (a name can be taken there):
    from the clone, or from the wheel ``make wheel`` builds."""
    from ._version import __version__

    return (f"pip install '.[{extra}]' in the edgelift clone, or pip install "
            f"'edgelift-{__version__}-py3-none-any.whl[{extra}]'")


def require(module: str, extra: str, purpose: str):
    """Import an optional dependency or raise :class:`MissingDependencyError` naming its extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(
            f"{purpose} needs the '{module}' package: {install_hint(extra)}"
        ) from e
