"""Reproducers for every failure found on hostile files: the ones issue 16 lists (measured on the code before
it) and the ones this fuzzer found since. ``python -m tests.fuzzing.findings`` writes them (from the seeds)
into ``tests/data/fuzz/`` with ``reproducers.json``: file, format, entry point, what was wrong. The
regression test runs each through its entry point; every one must now end clean (typed error / exit 2).
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from typing import Callable

from . import mutate as m
from .formats import _Payload, planted_pickle
from .seeds import REPO, build_seeds, tiny_llama_gguf

OUT = REPO / "tests" / "data" / "fuzz"
Maker = Callable[[Path, Path], None]  # (seeds root, destination)
FINDINGS: list[tuple[str, str, list[str], str, Maker]] = []  # (file, format, entries, what went wrong, maker)


def finding(file: str, fmt: str, entries: list[str], found: str):
    def deco(fn: Maker) -> Maker:
        FINDINGS.append((file, fmt, entries, found, fn))
        return fn
    return deco


def _zip_edit(src: Path, dst: Path, edit) -> None:
    entries = [(i.filename, d) for i, d in m.zip_entries(src.read_bytes())]
    edit(entries, entries[0][0].split("/")[0])
    dst.write_bytes(m.write_zip(entries))


@finding("pt2-opaque-obj-pickle.pt2", "pt2", ["cli-inspect", "cli-convert"],
         "critical: an opaque_obj_* constant (use_pickle false, valid tensor_meta) unpickled by torch.export.load")
def _(root: Path, dst: Path) -> None:
    def edit(entries, r):
        i = next(i for i, (n, _) in enumerate(entries) if n.endswith("constants_config.json"))
        w = next(d for n, d in entries if n.endswith("weights_config.json"))
        meta = next(iter(json.loads(w)["config"].values()))["tensor_meta"]
        entries[i] = (entries[i][0], json.dumps({"config": {"evil": {
            "path_name": "opaque_obj_0", "is_param": False, "use_pickle": False, "tensor_meta": meta}}}).encode())
        entries.append((f"{r}/data/constants/opaque_obj_0", planted_pickle()))
    _zip_edit(root / "digits.pt2", dst, edit)


@finding("pt2-non-utf8-entry-name.pt2", "pt2", ["cli-inspect"], "low: UnicodeDecodeError on a non-UTF-8 entry name")
def _(root: Path, dst: Path) -> None:
    dst.write_bytes(m.non_utf8_name((root / "digits.pt2").read_bytes(), "archive_version"))


for _align in (1, 2, 8):
    @finding(f"gguf-alignment-{_align}.gguf", "gguf", ["api-llama.cpp", "cli-run-llama.cpp"],
             f"high: llama.cpp aborts the interpreter (SIGABRT) on general.alignment {_align}")
    def _(root: Path, dst: Path, _align=_align) -> None:
        tiny_llama_gguf(dst, matrix_type="Q8_0", alignment=_align)


@finding("gguf-100000-keys.gguf", "gguf", ["api-llama.cpp"], "medium: 100,000 metadata keys hang llama.cpp (> 30 s)")
def _(root: Path, dst: Path) -> None:
    tiny_llama_gguf(dst, matrix_type="Q8_0", extra_keys=100_000)


@finding("gguf-head-count-kv-2e20.gguf", "gguf", ["api-edge-budget", "cli-run-edge"],
         "medium: head_count_kv = 2^20 sizes a 32 GiB KV cache in the edge engine")
def _(root: Path, dst: Path) -> None:
    tiny_llama_gguf(dst, matrix_type="Q8_0", edit=lambda meta: meta.__setitem__("llama.attention.head_count_kv",
                                                                                ("u32", 1 << 20)))


@finding("gguf-head-count-0.gguf", "gguf", ["cli-run-edge", "api-llama.cpp"],
         "medium: head_count = 0 is a ZeroDivisionError in the edge engine")
def _(root: Path, dst: Path) -> None:
    tiny_llama_gguf(dst, matrix_type="Q8_0", edit=lambda meta: meta.__setitem__("llama.attention.head_count", ("u32", 0)))


@finding("gguf-missing-embedding-length.gguf", "gguf", ["cli-run-edge", "api-llama.cpp"],
         "medium: a missing hyperparameter is a TypeError in the edge engine")
def _(root: Path, dst: Path) -> None:
    tiny_llama_gguf(dst, matrix_type="Q8_0", edit=lambda meta: meta.pop("llama.embedding_length"))


@finding("gguf-block-count-string.gguf", "gguf", ["cli-run-edge", "api-llama.cpp"],
         "medium: a wrong-typed hyperparameter is a TypeError in the edge engine")
def _(root: Path, dst: Path) -> None:
    tiny_llama_gguf(dst, matrix_type="Q8_0", edit=lambda meta: meta.__setitem__("llama.block_count", ("str", "two")))


for _eps in ("-1", "nan"):
    @finding(f"gguf-rms-eps-{_eps}.gguf", "gguf", ["api-llama.cpp"],
             f"found by the fuzzer: llama.cpp aborts (SIGABRT) on layer_norm_rms_epsilon {_eps}")
    def _(root: Path, dst: Path, _eps=_eps) -> None:
        tiny_llama_gguf(dst, matrix_type="Q8_0", edit=lambda meta: meta.__setitem__(
            "llama.attention.layer_norm_rms_epsilon", ("f32", float(_eps))))


@finding("tflite-truncated.tflite", "tflite", ["cli-inspect"],
         "high: edge inspect of a truncated .tflite ends in a struct.error traceback")
def _(root: Path, dst: Path) -> None:
    data = (root / "digits.tflite").read_bytes()
    dst.write_bytes(data[: len(data) - 43])


@finding("onnx-external-data-cut/model.onnx", "onnx", ["cli-plan", "api-load-budget"],
         "high: edge plan on a model whose external data file is cut: raw ONNX Runtime traceback, the data "
         "resolved against the working directory")
def _(root: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(root / "external" / "model.onnx", dst)
    side = (root / "external" / "model.onnx.data").read_bytes()
    (dst.parent / "model.onnx.data").write_bytes(side[: len(side) // 2])


def _onnx_edit(root: Path, dst: Path, edit, seed: str = "digits.onnx") -> None:
    import onnx

    model = onnx.load(str(root / seed))
    data = edit(model)
    dst.write_bytes(data if isinstance(data, bytes) else model.SerializeToString())


@finding("onnx-input-dim-2e31.onnx", "onnx", ["cli-run", "cli-plan"],
         "medium: an input dim of 2^31 makes --random request 1 TiB")
def _(root: Path, dst: Path) -> None:
    _onnx_edit(root, dst, lambda model: model.graph.input[0].type.tensor_type.shape.dim[2].__setattr__("dim_value", 1 << 31))


@finding("onnx-unknown-data-type.onnx", "onnx", ["cli-inspect"], "low: an unknown data_type is a KeyError in inspect")
def _(root: Path, dst: Path) -> None:
    _onnx_edit(root, dst, lambda model: model.graph.initializer[0].__setattr__("data_type", 999))


@finding("onnx-matmulnbits-no-block-size.onnx", "onnx", ["cli-inspect"],
         "low: MatMulNBits without block_size is a KeyError in inspect")
def _(root: Path, dst: Path) -> None:
    def edit(model):
        node = next(n for n in model.graph.node if n.op_type == "MatMulNBits")
        keep = [a for a in node.attribute if a.name != "block_size"]
        del node.attribute[:]
        node.attribute.extend(keep)
    _onnx_edit(root, dst, edit, "digits.int4.onnx")


@finding("onnx-non-utf8-op-type.onnx", "onnx", ["cli-inspect", "cli-convert"],
         "low: a non-UTF-8 op_type is a TypeError in inspect")
def _(root: Path, dst: Path) -> None:
    _onnx_edit(root, dst, lambda model: model.SerializeToString().replace(b"\x22\x04Conv", b"\x22\x04\xff\xfeon", 1))


@finding("npz-huge-shape.npz", "npz", ["cli-run-input", "api-input-set"],
         "medium: a 300-byte .npz whose header claims a huge shape is a MemoryError (64 GiB request)")
def _(root: Path, dst: Path) -> None:
    import numpy as np

    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (16777216, 1, 32, 32), }"
    header = header.ljust(len(header) + (-(len(header) + 11) % 64)) + "\n"
    body = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + np.zeros(16, np.float32).tobytes()
    dst.write_bytes(m.write_zip([("x.npy", body)]))


@finding("npz-header-tokenize-error.npz", "npz", ["api-input-set"],
         "found by the fuzzer: a bit-flipped .npy header raises tokenize.TokenError")
def _(root: Path, dst: Path) -> None:
    entries = [(i.filename, d) for i, d in m.zip_entries((root / "val.npz").read_bytes())]
    name, data = entries[0]
    data = data.replace(b"}", b"(", 1)  # an unclosed bracket: tokenize, not ast, sees it first
    entries[0] = (name, data)
    dst.write_bytes(m.write_zip(entries))


@finding("npz-object-array.npz", "npz", ["api-input-set"], "an object array (a pickle) in a calibration file")
def _(root: Path, dst: Path) -> None:
    import pickle

    header = "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    header = header.ljust(len(header) + (-(len(header) + 11) % 64)) + "\n"
    body = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + pickle.dumps(_Payload())
    dst.write_bytes(m.write_zip([("x.npy", body)]))


def _package_edit(root: Path, dst: Path, edit) -> None:
    shutil.copytree(root / "digits.fp32.mlpackage", dst)
    edit(dst)


@finding("coreml-manifest-nesting.mlpackage", "coreml", ["cli-inspect"], "medium: deep nesting in Manifest.json is a "
         "RecursionError")
def _(root: Path, dst: Path) -> None:
    _package_edit(root, dst, lambda d: (d / "Manifest.json").write_text("[" * 100_000 + "]" * 100_000))


@finding("coreml-manifest-nul-path.mlpackage", "coreml", ["cli-inspect"], "medium: a NUL in the manifest's model path "
         "is a ValueError")
def _(root: Path, dst: Path) -> None:
    def edit(d: Path) -> None:
        doc = json.loads((d / "Manifest.json").read_text())
        doc["itemInfoEntries"][doc["rootModelIdentifier"]]["path"] = "model\x00.mlmodel"
        (d / "Manifest.json").write_text(json.dumps(doc))
    _package_edit(root, dst, edit)


@finding("coreml-manifest-path-number.mlpackage", "coreml", ["cli-inspect"], "medium: a non-string model path is a "
         "TypeError")
def _(root: Path, dst: Path) -> None:
    def edit(d: Path) -> None:
        doc = json.loads((d / "Manifest.json").read_text())
        doc["itemInfoEntries"][doc["rootModelIdentifier"]]["path"] = 7
        (d / "Manifest.json").write_text(json.dumps(doc))
    _package_edit(root, dst, edit)


@finding("coreml-bad-datatype.mlpackage", "coreml", ["cli-inspect", "api-mil-run"], "medium: a MIL dataType outside "
         "the enum is a ValueError")
def _(root: Path, dst: Path) -> None:
    from coremltools.proto import Model_pb2

    def edit(d: Path) -> None:
        spec_path = next(d.rglob("model.mlmodel"))
        spec = Model_pb2.Model()
        spec.ParseFromString(spec_path.read_bytes())
        fn = spec.mlProgram.functions["main"]
        op = next(op for op in fn.block_specializations[fn.opset].operations if op.type == "const")
        op.outputs[0].type.tensorType.dataType = 999
        for a in op.attributes.values():
            a.type.tensorType.dataType = 999
        spec_path.write_bytes(spec.SerializeToString())
    _package_edit(root, dst, edit)


@finding("coreml-attribute-name-newline.mlpackage", "coreml", ["api-mil-run"],
         "found by the fuzzer: an attribute name with a newline made a two-line error message")
def _(root: Path, dst: Path) -> None:
    def edit(d: Path) -> None:
        spec_path = next(d.rglob("model.mlmodel"))
        spec_path.write_bytes(spec_path.read_bytes().replace(b"\x0a\x03val", b"\x0a\x03va\n", 1))
    _package_edit(root, dst, edit)


def _stream_edit(root: Path, dst: Path, edit) -> None:
    lines = (root / "device.stream").read_text().splitlines()
    dst.write_text("\n".join(edit(lines)) + "\n")


@finding("stream-empty-runs.txt", "stream", ["api-remote-stream"], "low: a device that streams an empty run list "
         "crashes the local CLI (KeyError)")
def _(root: Path, dst: Path) -> None:
    def edit(lines):
        doc = json.loads(lines[-1].partition(" ")[2])
        doc["runs"] = []
        return [ln for ln in lines if not ln.startswith("@@edge-run")][:-1] + ["@@edge-report " + json.dumps(doc)]
    _stream_edit(root, dst, edit)


@finding("stream-run-without-latency.txt", "stream", ["api-remote-stream"], "low: a streamed run without latency "
         "crashes the local CLI (KeyError)")
def _(root: Path, dst: Path) -> None:
    def edit(lines):
        out = []
        for ln in lines:
            prefix, _, body = ln.partition(" ")
            doc = json.loads(body)
            (doc.pop("latency", None) if prefix == "@@edge-run" else [r.pop("latency", None) for r in doc["runs"]])
            out.append(f"{prefix} {json.dumps(doc)}")
        return out
    _stream_edit(root, dst, edit)


@finding("stream-deep-nesting.txt", "stream", ["api-remote-stream"], "low: deeply nested JSON from a device is a "
         "RecursionError")
def _(root: Path, dst: Path) -> None:
    _stream_edit(root, dst, lambda lines: lines[:-1] + ["@@edge-report " + "[" * 100_000 + "]" * 100_000])


def write_findings(root: Path, out: Path = OUT) -> list[dict]:
    """(Re)write the reproducers made here; mutants the fuzzer saved (``found-*``) stay listed."""
    out.mkdir(parents=True, exist_ok=True)
    index = out / "reproducers.json"
    listed = [r for r in json.loads(index.read_text()) if r["file"].startswith("found-")] if index.exists() else []
    for file, fmt, entries, found, make in FINDINGS:
        dst = out / file
        if dst.exists():
            shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
        make(root, dst)
        for entry in entries:
            listed.append({"file": file, "format": fmt, "entry": entry, "found": found})
    (out / "reproducers.json").write_text(json.dumps(listed, indent=1) + "\n")
    return listed


if __name__ == "__main__":
    seeds = build_seeds(REPO / ".cache" / "fuzz-seeds")
    print(f"{len(write_findings(seeds))} reproducer cases written to {OUT}")
