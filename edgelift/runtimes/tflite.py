"""TFLite backends: LiteRT (``ai-edge-litert``, preferred) and the older ``tflite-runtime``.

Both expose the same ``Interpreter`` API. tflite-runtime 2.14 — the last release, still on many
Raspberry Pi images — has two known failure modes (toolchain.md) that we refuse instead of
returning wrong numbers: it does not work with numpy >= 2, and it computes dynamic-range quantized
models (int8 weights, float activations) wrongly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.formats import ModelFormat
from ..core.tflite import check_tflite, dynamic_dim_steps
from ..core.tensors import QuantParams, TensorSpec
from ..errors import InvalidOptionError, IncompatibleBackendError, ModelFormatError, ShapeError, shown
from .base import Session, register_backend

# Ops whose inputs after the first are weights: these may be int8 while activations stay float
# ("dynamic range"), and `edge inspect` counts them as parameters.
WEIGHT_OPS = {"FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "BATCH_MATMUL", "TRANSPOSE_CONV",
              "UNIDIRECTIONAL_SEQUENCE_LSTM", "EMBEDDING_LOOKUP"}


def _quant(detail: dict) -> QuantParams | None:
    qp = detail.get("quantization_parameters") or {}
    scales = np.asarray(qp.get("scales", []), dtype=np.float64)
    if scales.size == 0:
        return None
    zps = np.asarray(qp.get("zero_points", [0] * scales.size)).astype(np.int64)
    axis = int(qp.get("quantized_dimension", 0)) if scales.size > 1 else None
    return QuantParams(tuple(float(s) for s in scales), tuple(int(z) for z in zps), axis)


def _spec(detail: dict) -> TensorSpec:
    sig = detail.get("shape_signature")
    dims = sig if sig is not None and len(sig) == len(detail["shape"]) else detail["shape"]
    shape = tuple(None if int(d) < 0 else int(d) for d in dims)
    return TensorSpec(detail["name"], shape, np.dtype(detail["dtype"]).name, _quant(detail))


def dynamic_range_ops(interpreter) -> list[str]:
    """Ops that take float activations with int8/int4 weights (the "dynamic range" scheme)."""
    tensors = {d["index"]: d for d in interpreter.get_tensor_details()}
    found = []
    for op in interpreter._get_ops_details():
        ins = [i for i in op["inputs"] if i >= 0]
        if op["op_name"] in WEIGHT_OPS and len(ins) >= 2:
            act, weight = tensors.get(ins[0]), tensors.get(ins[1])
            if act and weight and np.dtype(act["dtype"]).kind == "f" and np.dtype(weight["dtype"]) in (np.int8, np.uint8):
                found.append(f"{op['op_name']}#{op['index']}")
    return found


class TFLiteSession(Session):
    """A TFLite ``Interpreter``; resizes inputs with a dynamic batch axis on demand."""

    def __init__(self, interpreter_cls, path: Path, threads: int | None, xnnpack: bool, resolver=None,
                 delegate: str | None = None, load_delegate=None) -> None:
        # what LiteRT would abort or fail obscurely on, refused first; the size steps of resizable dims kept
        self.size_steps = dynamic_dim_steps(check_tflite(path))
        delegate = delegate or ("xnnpack" if xnnpack else "none")
        kwargs = {"model_path": str(path), "num_threads": threads}
        if resolver is not None and delegate != "xnnpack":  # XNNPACK is LiteRT's default delegate
            kwargs["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        if delegate not in ("xnnpack", "none"):
            kwargs["experimental_delegates"] = [external_delegate(delegate, load_delegate)]
        self.delegate = delegate
        try:
            self.interpreter = interpreter_cls(**kwargs)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelFormatError(f"the TFLite interpreter cannot load {path}: {msg}") from e
        self._in = self.interpreter.get_input_details()
        self._out = self.interpreter.get_output_details()
        # the shapes the file was built (and checked) at: random data for a resizable dim is made at them, and
        # resizing replaces _in
        self.built_shapes = {d["name"]: tuple(int(x) for x in d["shape"]) for d in self._in}
        self.inputs = [_spec(d) for d in self._in]
        self.outputs = [_spec(d) for d in self._out]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        it = self.interpreter
        if any(tuple(feeds[d["name"]].shape) != tuple(d["shape"]) for d in self._in):
            self._check_steps(feeds)
            try:
                for d in self._in:
                    it.resize_tensor_input(d["index"], feeds[d["name"]].shape, strict=True)
                it.allocate_tensors()
            finally:  # refresh even when the resize failed, so the next call sees the real shapes
                self._in = it.get_input_details()
                self._out = it.get_output_details()
        for d in self._in:
            it.set_tensor(d["index"], feeds[d["name"]])
        it.invoke()
        return {d["name"]: it.get_tensor(d["index"]) for d in self._out}

    def _check_steps(self, feeds: dict[str, np.ndarray]) -> None:
        """A resizable dim holds only at multiples of the step it was verified at: another size would run with
        the built size's padding (wrong output, no error from LiteRT), so it is refused."""
        built = self.built_shapes
        for name, steps in self.size_steps.items():
            shape = feeds[name].shape if name in feeds else ()
            for axis, step in steps.items():
                if axis < len(shape) and shape[axis] % step:
                    at = f"; it was built at {int(built[name][axis])}" if name in built and axis < len(built[name]) else ""
                    raise ShapeError(f"input '{shown(name)}' dim {axis} is {shape[axis]}: this model resizes it in "
                                     f"steps of {step} only (sizes that are multiples of {step}{at})")

    def close(self) -> None:
        self.interpreter = None


# --delegate NAME -> the shared library LiteRT's load_delegate opens (or give the library's path)
DELEGATE_LIBRARIES = {"gpu": "libtensorflowlite_gpu_delegate.so", "nnapi": "libnnapi_delegate.so",
                      "hexagon": "libhexagon_delegate.so", "edgetpu": "libedgetpu.so.1"}


def external_delegate(name: str, load_delegate):
    """A LiteRT delegate from its shared library (``load_delegate``); refused with one line when the library is
    not on this device, never silently replaced by the CPU."""
    lib = DELEGATE_LIBRARIES.get(name, name)
    if load_delegate is None or (name not in DELEGATE_LIBRARIES and not lib.endswith((".so", ".dylib", ".dll"))
                                 and ".so." not in lib):
        raise InvalidOptionError(f"delegate '{name}' unknown: use xnnpack, none, {', '.join(DELEGATE_LIBRARIES)} "
                                 "or the path of a delegate library (.so)")
    try:
        return load_delegate(lib)
    except (ValueError, OSError, RuntimeError) as e:
        msg = " ".join(str(e).split())[:160]
        raise InvalidOptionError(f"delegate '{name}': {lib} could not be loaded ({msg}); install or build that "
                                 "delegate for this device and pass --delegate /path/to/lib.so, or use --delegate "
                                 "xnnpack (CPU)") from e


@register_backend("litert", formats=(ModelFormat.TFLITE,), package="ai_edge_litert", extra="tflite")
def open_litert(path: Path, threads: int | None, *, xnnpack: bool = True, delegate: str | None = None) -> TFLiteSession:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    def load_delegate(lib: str):
        from ai_edge_litert.interpreter import load_delegate as load

        return load(lib)

    return TFLiteSession(Interpreter, path, threads, xnnpack, OpResolverType, delegate, load_delegate)


def numpy_major() -> int:
    return int(np.__version__.split(".")[0])


@register_backend("tflite-runtime", formats=(ModelFormat.TFLITE,), package="tflite_runtime", extra="tflite-runtime")
def open_tflite_runtime(path: Path, threads: int | None, *, xnnpack: bool = True,
                        delegate: str | None = None) -> TFLiteSession:
    if numpy_major() >= 2:
        raise IncompatibleBackendError(
            f"tflite-runtime is built against numpy 1.x and fails with numpy {np.__version__}: "
            "pip install 'numpy<2', or use LiteRT (the [tflite] extra)")
    from tflite_runtime.interpreter import Interpreter

    try:
        from tflite_runtime.interpreter import OpResolverType
    except ImportError:  # very old releases
        OpResolverType = None
    def load_delegate(lib: str):
        from tflite_runtime.interpreter import load_delegate as load

        return load(lib)

    session = TFLiteSession(Interpreter, path, threads, xnnpack, OpResolverType, delegate, load_delegate)
    bad = dynamic_range_ops(session.interpreter)
    if bad:
        raise IncompatibleBackendError(
            f"{path} is dynamic-range quantized (float activations, int8 weights in {', '.join(bad[:3])}); "
            "tflite-runtime 2.14 computes such models wrongly: use LiteRT (the [tflite] extra)")
    return session
