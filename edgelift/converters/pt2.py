"""Load a ``torch.export`` ``.pt2`` program from an untrusted file without running anything it holds.

``torch.export.load`` runs code from the archive in several ways (PyTorch says: never load an
untrusted .pt2). Read in torch 2.13's ``pt2_archive/_package.py`` and ``_export/serde/serialize.py``:

- weights and constants declared ``use_pickle: true`` go through ``torch.load(weights_only=False)``;
  ``opaque_obj_*`` constants through ``pickle.loads`` and ``custom_obj_*`` through torchbind's
  unpickler, whatever their config says; sample inputs fall back to ``weights_only=False`` when the
  safe load fails; legacy ``<model>.pt`` weight files are unpickled too;
- ``data/aotinductor/`` entries are compiled shared libraries that get loaded;
- every symbolic shape expression (``expr_str``) goes through ``sympy.sympify``, which ``eval``s it;
- ``guards_code`` strings are pasted into Python source and ``exec``-ed when the module is built;
- a graph node's ``target`` is resolved by ``getattr`` from ``torch``/``math``/``operator``, so
  ``torch.os.system`` is a valid target, called when the model runs.

So nothing reaches torch unchecked: the archive may hold only the entries of a plain program
(``ALLOWED_ENTRIES``, by name), every weight and constant must be a plain tensor file with
``use_pickle: false`` whose declared view fits its bytes, every target must be an operator of an
allowed namespace, every shape expression a parse tree of constants and sympy constructors only,
and every guard a comparison of input sizes in the form torch's guard printer writes. Sample inputs must load with ``torch.load(weights_only=True)`` (PyTorch's restricted
unpickler). The checked program is rewritten with torch's own archive writer and loaded while ``pickle``
and torchbind unpickling and AOTInductor loading raise, and ``torch.load`` is weights-only whatever torch asks.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import logging
import re
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.json_schema import loads as json_loads
from ..errors import ModelFormatError, require

MAX_EXPANSION = 4  # uncompressed/compressed ratio allowed (torch stores entries uncompressed)
MAX_JSON_BYTES = 256 << 20
MAX_EXPR_CHARS = 4096

# Entry names below the archive's root folder; <m> is a model name. Anything else is refused by name.
_NAME = r"[A-Za-z0-9_.-]{1,128}"
ALLOWED_ENTRIES = {
    "archive_format": r"archive_format",
    "archive_version": r"archive_version",
    "byteorder": r"byteorder",
    "zip version": r"\.data/version",
    "serialization id": r"\.data/serialization_id",
    "program": rf"models/{_NAME}\.json",
    "weights config": rf"data/weights/{_NAME}_weights_config\.json",
    "weight data": r"data/weights/weight_\d{1,9}",
    "constants config": rf"data/constants/{_NAME}_constants_config\.json",
    "tensor constant data": r"data/constants/tensor_\d{1,9}",
    "sample inputs": rf"data/sample_inputs/{_NAME}\.pt",
    "extra file": rf"extra/{_NAME}",
}
_ALLOWED = re.compile("|".join(f"(?:{p})" for p in ALLOWED_ENTRIES.values()))
# where refused entries come from, for the message
_KNOWN_UNSAFE = {"data/aotinductor/": "AOTInductor compiled code (shared libraries)",
                 "data/constants/custom_obj_": "a torchbind custom object (unpickled)",
                 "data/constants/opaque_obj_": "an opaque Python object (pickle.loads)",
                 "xl_model_weights/": "external weights", "data/executorch/": "ExecuTorch code"}

# graph node targets: operators of these torch.ops namespaces, and the scalar helpers torch.export emits
_TARGET = re.compile(r"torch\.ops\.(aten|prims|quantized_decomposed|higher_order|quantized)\.[A-Za-z0-9_]+"
                     r"(\.[A-Za-z0-9_]+)?")
_SCALAR_TARGETS = {f"_operator.{n}" for n in ("getitem", "add", "sub", "mul", "floordiv", "truediv", "mod", "neg",
                                              "pos", "pow", "abs", "eq", "ne", "lt", "le", "gt", "ge", "and_", "or_",
                                              "xor", "not_", "invert", "lshift", "rshift")}
_SCALAR_TARGETS |= {f"math.{n}" for n in ("sqrt", "floor", "ceil", "trunc", "exp", "log", "sin", "cos", "tanh")}
_SCALAR_TARGETS |= {f"torch.{n}" for n in ("sym_int", "sym_float", "sym_max", "sym_min", "sym_not", "sym_sqrt",
                                           "sym_ite", "sym_sum", "_sym_sqrt", "_assert", "_check", "_check_is_size")}

# shape expressions are sympy ``srepr`` text: calls of capitalised constructors (Mul, Symbol, FloorDiv...)
# on numbers, symbol-name strings and keyword flags; lower-case names only for symbols and constants
_EXPR_NODES = (ast.Expression, ast.Call, ast.Name, ast.Load, ast.Constant, ast.keyword, ast.UnaryOp, ast.USub,
               ast.UAdd, ast.Not, ast.BinOp, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow,
               ast.Compare, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.BoolOp, ast.And, ast.Or)
_CALLABLE = re.compile(r"[A-Z][A-Za-z0-9]*(_[A-Za-z0-9]+)*")
_LOWER_NAMES = re.compile(r"[a-z]{1,8}\d{1,9}|oo|zoo|nan|true|false|pi|E|I")
_KEYWORD = re.compile(r"[a-z][a-z_]{0,31}")
_STRING = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}|[-+]?[0-9.]+(e[-+]?[0-9]+)?|[-+]?inf|nan")


@dataclass
class SafeProgram:
    """A checked program: the ExportedProgram and its sample inputs (``(args, kwargs)`` or None)."""

    exported: Any
    example_inputs: tuple | None


def load_exported_program(path: Path) -> SafeProgram:
    """``torch.export.load`` of ``path`` after the checks in this module's docstring; ModelFormatError if any fails."""
    torch = require("torch", "convert", "Loading .pt2 programs")
    with tempfile.TemporaryDirectory(prefix="edge-pt2-") as tmp:
        clean = Path(tmp) / "program.pt2"
        example = _sanitized_copy(path, clean, torch)
        try:
            with _nothing_runs(torch), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ep = torch.export.load(str(clean))
        except _Refused as e:
            raise ModelFormatError(f"{path}: loading it tried to {e}; refusing it") from None
        except Exception as e:  # torch's own errors on a program it cannot rebuild
            text = " ".join(str(e).split())[:160] or type(e).__name__
            raise ModelFormatError(f"{path} is not a loadable torch.export program ({type(e).__name__}: {text})") from e
    return SafeProgram(ep, example)


class _Refused(Exception):
    pass


@contextlib.contextmanager
def _nothing_runs(torch):
    """While torch loads the checked copy: every way to unpickle arbitrary objects or load compiled code raises;
    ``torch.load`` is forced to its weights-only unpickler (torch falls back to the unrestricted one otherwise)."""
    import pickle

    from torch.export.pt2_archive import _package

    def refuse(what: str):
        def raiser(*args, **kwargs):
            raise _Refused(what)
        return raiser

    real_load = torch.load

    def weights_only_load(f, *args, **kwargs):  # the sample inputs, already read with weights_only here
        kwargs["weights_only"] = True
        return real_load(f, *args, **kwargs)

    patches = [(pickle, "loads", refuse("unpickle an object")), (pickle, "load", refuse("unpickle an object")),
               (torch, "load", weights_only_load),
               (torch._C, "_pickle_load_obj", refuse("unpickle a torchbind object")),
               (_package, "_load_aoti", refuse("load AOTInductor compiled code"))]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    loggers = [logging.getLogger(n) for n in ("torch.export", "torch._export", "torch.export.pt2_archive._package")]
    levels = [lg.level for lg in loggers]
    try:
        for obj, name, fn in patches:
            setattr(obj, name, fn)
        for lg in loggers:  # torch logs a full traceback at WARNING when a load fails
            lg.setLevel(logging.CRITICAL + 1)
        yield
    finally:
        for obj, name, fn in saved:
            setattr(obj, name, fn)
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _sanitized_copy(path: Path, dst: Path, torch) -> tuple | None:
    """Check ``path`` entry by entry and write the plain program to ``dst``; return the sample inputs."""
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            _check_names(path, infos, size)
            bad = z.testzip()
            if bad is not None:
                raise ModelFormatError(f"{path}: entry {bad} is corrupted (CRC mismatch); save it again")
            root = infos[0].filename.split("/", 1)[0]
            records = {i.filename[len(root) + 1:]: i for i in infos}
            configs = {n: _json(path, z, i) for n, i in records.items() if n.endswith("_config.json")}
            for name, cfg in configs.items():
                _check_payload_config(path, name, cfg, records)
            programs = {n: _json(path, z, i) for n, i in records.items() if n.startswith("models/")}
            if not programs:
                raise ModelFormatError(f"{path} holds no program (models/*.json); save it with torch.export.save")
            for name, program in programs.items():
                _check_program(path, name, program)
            example = None
            from torch.export.pt2_archive._package import PT2ArchiveWriter

            with PT2ArchiveWriter(str(dst)) as out:
                for name, info in records.items():
                    if name.startswith(".data/"):
                        continue  # written by the archive writer itself
                    if name in programs:
                        out.write_bytes(name, json.dumps(programs[name]).encode())
                    elif name.startswith("data/sample_inputs/"):
                        data = z.read(info)
                        example = _sample_inputs(path, data, torch)  # weights-only, or refused
                        out.write_bytes(name, data)  # torch reads them again, weights-only too (see _nothing_runs)
                    else:
                        out.write_bytes(name, z.read(info))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, UnicodeDecodeError, ValueError,
            NotImplementedError, RuntimeError, KeyError) as e:  # RuntimeError: torch's zip writer/reader
        text = " ".join(str(e).split())[:160] or type(e).__name__
        raise ModelFormatError(f"{path} is a truncated or corrupted .pt2 archive ({text}); save it again") from e
    return example


def _check_names(path: Path, infos: list[zipfile.ZipInfo], size: int) -> None:
    if not infos:
        raise ModelFormatError(f"{path} is an empty archive, not a torch.export program")
    declared = sum(i.file_size for i in infos)
    if declared > MAX_EXPANSION * size + (1 << 20):
        raise ModelFormatError(f"{path}: archive declares {declared} bytes from a {size}-byte file; refusing it")
    root = infos[0].filename.split("/", 1)[0]
    seen: set[str] = set()
    for info in infos:
        name = info.filename
        if name in seen:
            raise ModelFormatError(f"{path}: entry '{name[:120]}' appears twice; refusing the archive")
        seen.add(name)
        head, sep, rest = name.partition("/")
        if head != root or not sep:
            raise ModelFormatError(f"{path}: entry '{name[:120]}' is outside the archive's folder '{root}'")
        if not _ALLOWED.fullmatch(rest):
            why = next((v for k, v in _KNOWN_UNSAFE.items() if rest.startswith(k)), "not part of a plain program")
            raise ModelFormatError(
                f"{path}: entry '{rest[:120]}' is {why}; edgelift loads only programs of plain tensors "
                "(torch.export.save of a model without custom objects or compiled code)")


def _json(path: Path, z: zipfile.ZipFile, info: zipfile.ZipInfo):
    if info.file_size > MAX_JSON_BYTES:
        raise ModelFormatError(f"{path}: {info.filename} is {info.file_size} bytes; refusing it")
    try:
        return json_loads(z.read(info).decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        text = " ".join(str(e).split())[:120]
        raise ModelFormatError(f"{path}: {info.filename} is not valid JSON ({text}); save it again") from e


def _check_payload_config(path: Path, name: str, cfg, records: dict) -> None:
    """Each weight/constant: a plain tensor file (``use_pickle: false``) whose declared view fits its bytes."""
    from torch._export.serde.serialize import _SERIALIZE_TO_TORCH_DTYPE

    folder, prefix = ("data/weights/", "weight_") if name.startswith("data/weights/") else ("data/constants/", "tensor_")
    entries = cfg.get("config") if isinstance(cfg, dict) else None
    if not isinstance(entries, dict):
        raise ModelFormatError(f"{path}: {name} has no 'config' table; the archive is corrupted")
    for fqn, meta in entries.items():
        where = f"{path}: {'weight' if prefix == 'weight_' else 'constant'} '{str(fqn)[:80]}'"
        if not isinstance(meta, dict):
            raise ModelFormatError(f"{where} has no payload description; the archive is corrupted")
        if meta.get("use_pickle") is not False:
            raise ModelFormatError(f"{where} is stored as a pickle (use_pickle: {meta.get('use_pickle')!r}); edgelift "
                                   "loads only plain tensors — export without tensor subclasses or custom objects")
        file = meta.get("path_name")
        if not isinstance(file, str) or not re.fullmatch(rf"{prefix}\d{{1,9}}", file):
            kind = next((v for k, v in _KNOWN_UNSAFE.items() if isinstance(file, str) and (folder + file).startswith(k)),
                        "not a plain tensor file")
            raise ModelFormatError(f"{where} is stored in '{str(file)[:60]}', {kind}; refusing it")
        record = records.get(folder + file)
        if record is None:
            raise ModelFormatError(f"{where}: its data file {folder + file} is missing; the archive is truncated")
        tm = meta.get("tensor_meta")
        if not isinstance(tm, dict):
            raise ModelFormatError(f"{where} has no tensor_meta; the archive is corrupted")
        dtype = _SERIALIZE_TO_TORCH_DTYPE.get(tm.get("dtype")) if isinstance(tm.get("dtype"), int) else None
        sizes, strides = _ints(tm.get("sizes")), _ints(tm.get("strides"))
        offset = _ints([tm.get("storage_offset")])
        if dtype is None or sizes is None or strides is None or offset is None or len(sizes) != len(strides) \
                or min([*sizes, *strides, *offset], default=0) < 0:
            raise ModelFormatError(f"{where} has an invalid tensor_meta (dtype, sizes, strides); the archive is corrupted")
        elements = record.file_size // max(dtype.itemsize, 1)
        numel, extent = 1, offset[0] + 1
        for n, s in zip(sizes, strides):
            numel *= n
            extent += (n - 1) * s if n else 0
        if numel and (extent > elements or numel > elements):
            raise ModelFormatError(f"{where} declares {numel} elements (shape {sizes}) but its file holds {elements}; "
                                   "the archive is corrupted")


def _ints(values) -> list[int] | None:
    """Values of serialized SymInts (``{"as_int": n}``); None unless every one is a plain int."""
    if not isinstance(values, list):
        return None
    out = []
    for v in values:
        n = v.get("as_int") if isinstance(v, dict) else None
        if not isinstance(n, int) or isinstance(n, bool):
            return None
        out.append(n)
    return out


def _check_program(path: Path, name: str, program) -> None:
    """Targets from the allowlist, shape expressions that are only constructors and constants, no guards."""
    if not isinstance(program, dict):
        raise ModelFormatError(f"{path}: {name} is not a serialized program; the archive is corrupted")
    guards = program.get("guards_code", [])
    if not isinstance(guards, list):
        raise ModelFormatError(f"{path}: {name} has guards_code that is not a list; the archive is corrupted")
    for guard in guards:
        _check_guard(path, guard)
    stack = [program]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            target = node.get("target")
            if isinstance(target, str) and not (_TARGET.fullmatch(target) or target in _SCALAR_TARGETS):
                raise ModelFormatError(f"{path}: the graph calls '{target[:80]}', which is not an operator edgelift "
                                       "allows (torch.ops.aten/prims/quantized); refusing it")
            expr = node.get("expr_str")
            if expr is not None:
                _check_expr(path, expr)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _parsed(text: str, allowed: tuple, refuse) -> list:
    """The nodes of ``text`` parsed (never run) as one Python expression, each of an ``allowed`` type."""
    try:
        nodes = list(ast.walk(ast.parse(text, mode="eval")))
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise refuse(f"does not parse ({type(e).__name__})") from None
    for node in nodes:
        if not isinstance(node, allowed):
            raise refuse(f"contains {type(node).__name__}")
    return nodes


def _check_expr(path: Path, expr) -> None:
    def refuse(why: str):
        return ModelFormatError(f"{path}: a shape expression {str(expr)[:60]!r} {why}; refusing it (sympy would eval it)")

    if not isinstance(expr, str) or len(expr) > MAX_EXPR_CHARS:
        raise refuse("is not a short string")
    for node in _parsed(expr, _EXPR_NODES, refuse):
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and _CALLABLE.fullmatch(node.func.id)):
            raise refuse("calls something other than a sympy constructor")
        if isinstance(node, ast.Name) and not (_CALLABLE.fullmatch(node.id) or _LOWER_NAMES.fullmatch(node.id)):
            raise refuse(f"names '{node.id}'")
        if isinstance(node, ast.keyword) and not (node.arg and _KEYWORD.fullmatch(node.arg)):
            raise refuse("passes an unexpected keyword")
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and not _STRING.fullmatch(node.value):
            raise refuse("holds an unexpected string")
        if isinstance(node, ast.Constant) and not isinstance(node.value, (str, int, float, bool, type(None))):
            raise refuse("holds an unexpected constant")


_GUARD_NODES = (ast.Expression, ast.Compare, ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.Constant, ast.Subscript,
                ast.Call, ast.Attribute, ast.Name, ast.Load, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.And,
                ast.Or, ast.Not, ast.USub, ast.UAdd, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow)
_GUARD_METHODS = {"size", "stride", "dim", "numel", "storage_offset"}
_GUARD_MATH = {"floor", "ceil", "sqrt", "trunc"}


def _check_guard(path: Path, guard) -> None:
    """A guard is Python source torch pastes into a function and ``exec``s: accept only what torch's guard
    printer writes — comparisons and arithmetic on ``L['input'].size()[i]`` (and ``.stride()``...),
    numbers and ``math.floor``-style calls — on one line, with no quote a string could close."""
    def refuse(why: str):
        return ModelFormatError(f"{path}: a guard {str(guard)[:60]!r} {why}; refusing it (torch would exec it)")

    if not isinstance(guard, str) or len(guard) > MAX_EXPR_CHARS or any(c in guard for c in '"\\\n\r'):
        raise refuse("is not one short line")
    for node in _parsed(guard, _GUARD_NODES, refuse):
        if isinstance(node, ast.Name) and node.id not in ("L", "math"):
            raise refuse(f"names '{node.id}'")
        if isinstance(node, ast.Attribute) and not (
                (node.attr in _GUARD_METHODS and isinstance(node.value, ast.Subscript))
                or (node.attr in _GUARD_MATH and isinstance(node.value, ast.Name) and node.value.id == "math")):
            raise refuse(f"reaches attribute '{node.attr}'")
        if isinstance(node, ast.Call) and (not isinstance(node.func, ast.Attribute) or node.keywords):
            raise refuse("calls something other than a size method or math function")
        if isinstance(node, ast.Subscript) and not (
                (isinstance(node.value, ast.Name) and node.value.id == "L" and isinstance(node.slice, ast.Constant)
                 and isinstance(node.slice.value, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", node.slice.value))
                or (isinstance(node.slice, ast.Constant) and type(node.slice.value) is int)):
            raise refuse("indexes something other than an input's sizes")
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and not re.fullmatch(
                r"[A-Za-z_][A-Za-z0-9_]{0,63}", node.value):
            raise refuse("holds an unexpected string")


def _sample_inputs(path: Path, data: bytes, torch) -> tuple | None:
    """The program's saved example inputs, through PyTorch's restricted (weights-only) unpickler."""
    if not data:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = torch.load(io.BytesIO(data), weights_only=True)
    except Exception as e:  # weights_only refuses any global outside its allowlist
        raise ModelFormatError(f"{path}: its sample inputs need arbitrary unpickling to load ({type(e).__name__}); "
                               "refusing it") from e
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], tuple) and isinstance(value[1], dict):
        return value
    return None


__all__ = ["SafeProgram", "load_exported_program", "ALLOWED_ENTRIES"]
