"""Per format: its seed files, the mutators that make sense for it, and the entry points that read it."""

from __future__ import annotations

import json
import pickle
import random
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import mutate as m
from .entries import ENTRIES, PAYLOAD_MARK

Mutator = Callable[[Path, Path, random.Random], str]  # (seed, destination, rng) -> what changed


@dataclass
class FuzzFormat:
    name: str
    suffix: str
    seeds: list[Path]
    mutators: list[Mutator]
    weight: float = 1.0  # mutants relative to other formats (GGUF: 2.5, so each backend gets the count)

    @property
    def entries(self) -> list[str]:
        return list(ENTRIES[self.name])


def _bytes(fn: m.ByteMutator) -> Mutator:
    def apply(seed: Path, dst: Path, rng: random.Random) -> str:
        data, what = fn(seed.read_bytes(), rng)
        dst.write_bytes(data)
        return what

    apply.__name__ = fn.__name__
    return apply


GENERIC = [_bytes(f) for f in m.GENERIC]


# --- ONNX --------------------------------------------------------------------------------------------

def onnx_semantic(seed: Path, dst: Path, rng: random.Random) -> str:
    """A valid protobuf whose content lies: dims, types, attributes, names, external data, opsets."""
    import onnx
    from onnx import TensorProto

    model = onnx.load(str(seed), load_external_data=False)
    g = model.graph
    kind = rng.choice(["input_dim", "elem_type", "init_type", "init_dims", "drop_attr", "op_type", "ext_data",
                       "dup_output", "cycle", "opset", "ir", "missing_input", "empty_graph", "init_raw"])
    if kind == "input_dim" and g.input:
        d = rng.choice(g.input[0].type.tensor_type.shape.dim)
        d.Clear()
        d.dim_value = rng.choice([0, 1 << 31, (1 << 40), 1 << 62, 100_000])
    elif kind == "elem_type" and g.input:
        rng.choice([*g.input, *g.output]).type.tensor_type.elem_type = rng.choice([0, 8, 999, 23, 17])
    elif kind == "init_type" and g.initializer:
        rng.choice(g.initializer).data_type = rng.choice([0, 999, 8, 16, 22])
    elif kind == "init_dims" and g.initializer:
        t = rng.choice(g.initializer)
        t.dims[:] = [rng.choice([1 << 31, 1 << 40, 0, 3])] + list(t.dims[1:])
    elif kind == "drop_attr":
        nodes = [n for n in g.node if n.attribute]
        if nodes:
            n = rng.choice(nodes)
            del n.attribute[rng.randrange(len(n.attribute))]
    elif kind == "op_type" and g.node:
        rng.choice(g.node).op_type = rng.choice(["NoSuchOp", "", "Conv" * 50, "If", "Loop"])
    elif kind == "ext_data" and g.initializer:
        t = max(g.initializer, key=lambda t: len(t.raw_data))
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        for k, v in {"location": rng.choice(["../../etc/passwd", "/etc/passwd", "missing.bin", "model.onnx.data",
                                             "\x00x", "a" * 300]),
                     "offset": str(rng.choice([0, 1 << 40, 7])), "length": str(rng.choice([16, 1 << 40, 0]))}.items():
            e = t.external_data.add()
            e.key, e.value = k, v
    elif kind == "dup_output" and len(g.node) > 1:
        g.node[1].output[0] = g.node[0].output[0]
    elif kind == "cycle" and g.node:
        n = rng.choice(g.node)
        n.input.append(n.output[0])
    elif kind == "opset":
        model.opset_import[0].version = rng.choice([0, 1, 99, 1 << 40])
    elif kind == "ir":
        model.ir_version = rng.choice([0, 1, 99, 1 << 40])
    elif kind == "missing_input" and g.node:
        rng.choice(g.node).input.append("nowhere")
    elif kind == "empty_graph":
        del g.node[:]
    elif kind == "init_raw" and g.initializer:
        t = rng.choice(g.initializer)
        t.raw_data = t.raw_data[: rng.randrange(len(t.raw_data) + 1)]
    data = model.SerializeToString()
    if kind == "op_type" and rng.random() < 0.5 and g.node:  # non-UTF-8 op type, below what protobuf checks
        data = data.replace(b"\x22\x04Conv", b"\x22\x04\xff\xfeon", 1)
    dst.write_bytes(data)
    return kind


def onnx_external(seed: Path, dst: Path, rng: random.Random) -> str:
    """The model with its weights in a sidecar: sidecar truncated or replaced, or the model pointing elsewhere."""
    folder = seed.parent / "external"
    sidecar = dst.parent / f"{dst.stem}.onnx.data"  # as long as "model.onnx.data": the protobuf keeps its lengths
    shutil.copyfile(folder / "model.onnx.data", sidecar)
    data = (folder / "model.onnx").read_bytes().replace(b"model.onnx.data", sidecar.name.encode())
    kind = rng.choice(["sidecar_cut", "sidecar_gone", "path_escape", "model_bytes"])
    if kind == "sidecar_cut":
        side = sidecar.read_bytes()
        sidecar.write_bytes(side[: rng.randrange(len(side))])
    elif kind == "sidecar_gone":
        sidecar.unlink()
    elif kind == "path_escape":
        data = data.replace(sidecar.name.encode(), rng.choice([b"../onnx.data.xx", b"/etc/hostname\x00\x00", b"m" * 15]))
    else:
        data, _ = rng.choice(m.GENERIC)(data, rng)
    dst.write_bytes(data)
    return kind


# --- TFLite -----------------------------------------------------------------------------------------------

def tflite_semantic(seed: Path, dst: Path, rng: random.Random) -> str:
    """A tensor's shape, type or buffer index, or an operator's opcode or tensor index, set to a value the
    schema allows but the model cannot hold (located with the flatbuffer's own accessors)."""
    import tflite

    data = bytearray(seed.read_bytes())
    model = tflite.Model.GetRootAsModel(bytes(data), 0)
    sg = model.Subgraphs(0)
    kind = rng.choice(["shape", "shape", "type", "buffer", "opcode", "op_input", "io"])

    def vector_at(table, slot: int) -> tuple[int, int]:
        o = table._tab.Offset(slot)
        return table._tab.Vector(o), table._tab.VectorLen(o)

    def field_at(table, slot: int) -> int:
        return table._tab.Pos + table._tab.Offset(slot)

    if kind in ("shape", "type", "buffer"):
        t = sg.Tensors(rng.randrange(sg.TensorsLength()))
        if kind == "shape" and t.ShapeLength():
            start, n = vector_at(t, 4)
            value = rng.choice([0, -1, -5, 1 << 20, (1 << 31) - 1])
            struct.pack_into("<i", data, start + 4 * rng.randrange(n), value)
            what = f"tensor {t.Name()!r} shape dim set to {value}"
        elif kind == "type" and t._tab.Offset(6):
            value = rng.choice([30, 99, 127])
            data[field_at(t, 6)] = value
            what = f"tensor {t.Name()!r} type set to {value}"
        elif t._tab.Offset(8):
            value = rng.choice([model.BuffersLength(), 1 << 20, 0xFFFFFFFF])
            struct.pack_into("<I", data, field_at(t, 8), value)
            what = f"tensor {t.Name()!r} buffer index set to {value}"
        else:
            return _bytes(m.word_set)(seed, dst, rng)
    elif kind in ("opcode", "op_input"):
        op = sg.Operators(rng.randrange(sg.OperatorsLength()))
        if kind == "opcode" and not op._tab.Offset(4):  # opcode 0 is the default: not stored, nothing to edit
            return _bytes(m.word_set)(seed, dst, rng)
        if kind == "opcode":
            value = rng.choice([model.OperatorCodesLength(), 1 << 20])
            struct.pack_into("<I", data, field_at(op, 4), value)
            what = f"operator opcode index set to {value}"
        else:
            start, n = vector_at(op, 6)
            value = rng.choice([sg.TensorsLength(), -2, 1 << 20])
            struct.pack_into("<i", data, start + 4 * rng.randrange(n), value)
            what = f"operator input set to tensor {value}"
    else:
        start, n = vector_at(sg, rng.choice([6, 8]))
        value = rng.choice([sg.TensorsLength(), -1, 1 << 30])
        struct.pack_into("<i", data, start + 4 * rng.randrange(n), value)
        what = f"subgraph input/output set to tensor {value}"
    dst.write_bytes(bytes(data))
    return what


# --- GGUF ------------------------------------------------------------------------------------------------

def gguf_fields(data: bytes) -> list[tuple[int, int, str]]:
    """(offset, size, kind) of the header's counts, lengths, types and values."""
    out: list[tuple[int, int, str]] = [(8, 8, "n_tensors"), (16, 8, "n_kv")]
    pos = 24
    u32 = lambda p: struct.unpack_from("<I", data, p)[0]  # noqa: E731
    u64 = lambda p: struct.unpack_from("<Q", data, p)[0]  # noqa: E731
    from edgelift.core.gguf import _SCALARS

    sizes = {vtype: struct.calcsize(fmt) for vtype, fmt in _SCALARS.items()}
    n_tensors, n_kv = u64(8), u64(16)
    for _ in range(n_kv):
        out.append((pos, 8, "key_len"))
        pos += 8 + u64(pos)
        out.append((pos, 4, "value_type"))
        vt = u32(pos)
        pos += 4
        if vt in sizes:
            out.append((pos, sizes[vt], "value"))
            pos += sizes[vt]
        elif vt == 8:
            out.append((pos, 8, "str_len"))
            pos += 8 + u64(pos)
        elif vt == 9:
            et, n = u32(pos), u64(pos + 4)
            out += [(pos, 4, "array_type"), (pos + 4, 8, "array_count")]
            pos += 12
            for _ in range(n):
                if et == 8:
                    out.append((pos, 8, "str_len")) if len(out) < 4000 else None
                    pos += 8 + u64(pos)
                else:
                    pos += sizes[et]
    for _ in range(n_tensors):
        out.append((pos, 8, "name_len"))
        pos += 8 + u64(pos)
        out.append((pos, 4, "n_dims"))
        nd = u32(pos)
        pos += 4
        out += [(pos + 8 * i, 8, "dim") for i in range(nd)]
        pos += 8 * nd
        out += [(pos, 4, "ggml_type"), (pos + 4, 8, "offset")]
        pos += 12
    return out


def gguf_field(seed: Path, dst: Path, rng: random.Random) -> str:
    data = bytearray(seed.read_bytes())
    at, size, kind = rng.choice(gguf_fields(bytes(data)))
    value = rng.choice(m.INTERESTING_32 if size <= 4 else m.INTERESTING_64) & ((1 << (8 * size)) - 1)
    data[at:at + size] = value.to_bytes(size, "little")
    dst.write_bytes(bytes(data))
    return f"{kind} at {at} set to {value:#x}"


def gguf_semantic(seed: Path, dst: Path, rng: random.Random) -> str:
    """A well-formed GGUF whose header lies: hyperparameters, wrong types, missing keys, alignment, key floods."""
    from .seeds import tiny_llama_gguf

    hparams = ["llama.block_count", "llama.attention.head_count", "llama.attention.head_count_kv",
               "llama.embedding_length", "llama.context_length", "llama.rope.dimension_count",
               "llama.feed_forward_length", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"]
    kind = rng.choice(["hparam", "hparam", "retype", "drop", "alignment", "keys", "vocab", "float"])
    args: dict = {"matrix_type": "Q8_0" if "q8" in seed.name else "F32"}
    if kind == "hparam":
        key, value = rng.choice(hparams), rng.choice([0, 1, 3, 1 << 20, (1 << 31) - 1, 0xFFFFFFFF])
        args["edit"] = lambda meta: meta.__setitem__(key, ("u32", value))
        what = f"{key} = {value}"
    elif kind == "retype":
        key = rng.choice(hparams + ["tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.merges"])
        value = rng.choice([("str", "x"), ("f32", 2.5), ("bool", True), ("i32", -1), ("strs", ["a", "b"])])
        args["edit"] = lambda meta: meta.__setitem__(key, value)
        what = f"{key} retyped to {value[0]}"
    elif kind == "drop":
        key = rng.choice(hparams + ["tokenizer.ggml.tokens", "tokenizer.ggml.model", "tokenizer.ggml.token_type",
                                    "general.architecture"])
        args["edit"] = lambda meta: meta.pop(key, None)
        what = f"{key} removed"
    elif kind == "alignment":
        args["alignment"] = rng.choice([1, 2, 8, 16, 64, 4096])
        what = f"alignment {args['alignment']}"
    elif kind == "keys":
        args["extra_keys"] = rng.choice([5000, 100_000])
        what = f"{args['extra_keys']} extra keys"
    elif kind == "float":
        key = rng.choice(["llama.rope.freq_base", "llama.attention.layer_norm_rms_epsilon"])
        value = rng.choice([0.0, -1.0, float("nan"), float("inf"), 1e30])
        args["edit"] = lambda meta: meta.__setitem__(key, ("f32", value))
        what = f"{key} = {value}"
    else:
        size = rng.choice([0, 1, 5, 100])
        args["edit"] = lambda meta: meta.__setitem__("tokenizer.ggml.tokens", ("strs", [chr(65 + i % 26) * (i + 1)
                                                                                         for i in range(size)]))
        what = f"vocabulary of {size} tokens"
    if kind in ("hparam", "retype", "drop", "vocab", "float") and rng.random() < 0.3:
        args["alignment"] = 32
    tiny_llama_gguf(dst, **args)
    return what


# --- pt2 ------------------------------------------------------------------------------------------------

class _Payload:
    """Unpickling it creates the PAYLOAD_RAN folder in the current directory (the case's workdir)."""

    def __reduce__(self):
        import os

        return (os.mkdir, (PAYLOAD_MARK,))


def planted_pickle() -> bytes:
    data = pickle.dumps(_Payload())
    return data + b"\0" * (-len(data) % 8)


def pt2_entries(seed: Path, dst: Path, rng: random.Random) -> str:
    """An entry of the archive edited: JSON structure, a pickle planted, names, duplicates, extras."""
    entries = [(i.filename, d) for i, d in m.zip_entries(seed.read_bytes())]
    root = entries[0][0].split("/")[0]
    kind = rng.choice(["json", "json", "payload", "use_pickle", "extra", "duplicate", "drop", "data", "non_utf8",
                       "aoti", "expr", "target"])
    what = kind
    jsons = [i for i, (n, _) in enumerate(entries) if n.endswith(".json")]
    if kind == "json":
        i = rng.choice(jsons)
        doc, what = m.json_edit(json.loads(entries[i][1]), rng)
        entries[i] = (entries[i][0], m.dump_json(doc))
        what = f"{entries[i][0].split('/', 1)[1]}: {what}"
    elif kind == "payload":
        where = rng.choice(["data/constants/opaque_obj_0", "data/constants/custom_obj_0", "data/sample_inputs/model.pt",
                            "data/weights/model.pt", "serialized_state_dict.pt"])
        entries = [(n, d) for n, d in entries if not n.endswith(where)]
        entries.append((f"{root}/{where}", planted_pickle()))
        cfg = next(i for i, (n, _) in enumerate(entries) if n.endswith("constants_config.json"))
        if "obj_" in where:
            doc = json.loads(entries[cfg][1])
            doc["config"]["planted"] = {"path_name": where.rsplit("/", 1)[1], "is_param": False, "use_pickle": False,
                                        "tensor_meta": {"dtype": 1, "sizes": [{"as_int": 8}], "requires_grad": False,
                                                        "device": {"type": "cpu", "index": None},
                                                        "strides": [{"as_int": 1}],
                                                        "storage_offset": {"as_int": 0}, "layout": 7}}
            entries[cfg] = (entries[cfg][0], json.dumps(doc).encode())
        what = f"pickle planted at {where}"
    elif kind == "use_pickle":
        i = next(i for i, (n, _) in enumerate(entries) if n.endswith("weights_config.json"))
        doc = json.loads(entries[i][1])
        key = rng.choice(list(doc["config"]))
        doc["config"][key]["use_pickle"] = True
        file = doc["config"][key]["path_name"]
        entries = [(n, planted_pickle() if n.endswith("/" + file) else d) for n, d in entries]
        entries[i] = (entries[i][0], json.dumps(doc).encode())
        what = f"weight {key} replaced by a pickle with use_pickle true"
    elif kind == "extra":
        entries.append((f"{root}/{rng.choice(['data/aotinductor/model/x.so', 'extra/notes', 'other.bin'])}", b"x" * 64))
    elif kind == "duplicate":
        entries.append(rng.choice(entries))
    elif kind == "drop":
        entries.pop(rng.randrange(len(entries)))
    elif kind == "data":
        i = rng.randrange(len(entries))
        data, what = rng.choice(m.GENERIC)(entries[i][1], rng)
        entries[i] = (entries[i][0], data)
    elif kind == "expr" or kind == "target":
        i = next(i for i, (n, _) in enumerate(entries) if n.endswith("models/model.json"))
        text = entries[i][1].decode()
        if kind == "target":
            text = text.replace('"torch.ops.aten.', '"torch.os.system"  ,"x":"', 1)
        else:
            text = text.replace('"guards_code": [', '"guards_code": ["__import__(\'os\').mkdir(\'%s\')", ' % PAYLOAD_MARK, 1)
        entries[i] = (entries[i][0], text.encode())
    out = m.write_zip(entries)
    if kind == "aoti":
        out = m.write_zip(entries + [(f"{root}/data/aotinductor/model/model.so", b"\x7fELF" + b"\0" * 60)])
    if kind == "non_utf8":
        out = m.non_utf8_name(out, "archive_version")
    dst.write_bytes(out)
    return what


# --- npz, safetensors ---------------------------------------------------------------------------------------

def npz_header(seed: Path, dst: Path, rng: random.Random) -> str:
    """An .npy header inside the archive that claims another shape, dtype or order than its data."""
    entries = [(i.filename, d) for i, d in m.zip_entries(seed.read_bytes())]
    i = rng.randrange(len(entries))
    name, data = entries[i]
    header_len = struct.unpack_from("<H", data, 8)[0]
    header = data[10:10 + header_len].decode("latin1")
    kind = rng.choice(["shape", "dtype", "order", "len", "object", "member", "unicode"])
    if kind == "shape":
        new = rng.choice(["(1099511627776,)", "(4294967296, 4294967296)", "(-1,)", "()", "(0, 1, 8, 8)"])
        header = header[:header.index("'shape':")] + f"'shape': {new}, }}"
    elif kind == "dtype":
        header = header.replace(header[header.index("'descr':"):header.index(",", header.index("'descr':"))],
                                "'descr': " + rng.choice(["'|O'", "'<U1000000000'", "'x9'", "[('a', '<f4')]", "1"]))
    elif kind == "order":
        header = header.replace("False", rng.choice(["True", "1", "'x'"]))
    elif kind == "object":
        body = pickle.dumps(_Payload())
        header, data = "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }", data[:10 + header_len] + body
    elif kind == "member":
        name = rng.choice(["evil.pkl", "x", "../../etc/passwd.npy"])
    elif kind == "unicode":
        name = "\udcff.npy"
    if kind == "len":
        data = data[:8] + struct.pack("<H", rng.choice([0, 0xFFFF, header_len + 100])) + data[10:]
    else:
        header = header.ljust(len(header) + (-(len(header) + 11) % 64)) + "\n"
        data = data[:8] + struct.pack("<H", len(header)) + header.encode("latin1") + data[10 + header_len:]
    entries[i] = (name.encode("utf-8", "surrogateescape").decode("latin1") if kind == "unicode" else name, data)
    dst.write_bytes(m.write_zip(entries))
    return f"{name}: {kind}"


def safetensors_header(seed: Path, dst: Path, rng: random.Random) -> str:
    data = seed.read_bytes()
    n = struct.unpack_from("<Q", data)[0]
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    kind = rng.choice(["json", "json", "len", "offsets", "shape", "dtype"])
    key = rng.choice([k for k in header if k != "__metadata__"])
    if kind == "json":
        header, what = m.json_edit(header, rng)
    elif kind == "offsets":
        header[key]["data_offsets"] = rng.choice([[0, 1 << 40], [10, 5], [0, 0], [-1, 4], [len(body), len(body) + 4]])
    elif kind == "shape":
        header[key]["shape"] = rng.choice([[1 << 40], [0], [-1], [1 << 31, 1 << 31], []])
    elif kind == "dtype":
        header[key]["dtype"] = rng.choice(["X9", "F8_E4M3", "I64", "BOOL", ""])
    raw = m.dump_json(header)
    size = len(raw) if kind != "len" else rng.choice([0, 1 << 40, len(raw) + 1000, 7])
    dst.write_bytes(struct.pack("<Q", size) + raw + body)
    return f"{kind} ({key})"


# --- JSON documents: a device's stream, a report file --------------------------------------------------------

def stream_edit(seed: Path, dst: Path, rng: random.Random) -> str:
    lines = seed.read_text().splitlines()
    kind = rng.choice(["json", "json", "json", "cut", "drop", "empty_runs", "garbage"])
    i = rng.randrange(len(lines))
    prefix, _, body = lines[i].partition(" ")
    if kind == "json":
        doc, what = m.json_edit(json.loads(body), rng)
        lines[i] = f"{prefix} {m.dump_json(doc).decode('utf-8', 'surrogatepass')}"
        return _write_lines(dst, lines, f"line {i}: {what}")
    if kind == "cut":
        lines[i] = lines[i][: rng.randrange(len(lines[i]))]
    elif kind == "drop":
        lines.pop(i)
    elif kind == "empty_runs":
        lines = [ln for ln in lines if not ln.startswith("@@edge-run")]
        doc = json.loads(lines[-1].partition(" ")[2])
        doc["runs"] = []
        lines[-1] = "@@edge-report " + json.dumps(doc)
    else:
        lines.insert(i, prefix + " " + rng.choice(["{", "[]", "null", "1e999", '{"runs": 1}', "\x00\xff"]))
    return _write_lines(dst, lines, f"line {i}: {kind}")


def _write_lines(dst: Path, lines: list[str], what: str) -> str:
    dst.write_bytes("\n".join(lines).encode("utf-8", "surrogatepass") + b"\n")
    return what


def report_edit(seed: Path, dst: Path, rng: random.Random) -> str:
    doc, what = m.json_edit(json.loads(seed.read_text()), rng)
    dst.write_bytes(m.dump_json(doc))
    return what


# --- Core ML packages (directories) ----------------------------------------------------------------------------

def mlpackage_edit(seed: Path, dst: Path, rng: random.Random) -> str:
    shutil.copytree(seed, dst)
    manifest = dst / "Manifest.json"
    spec = next(dst.rglob("model.mlmodel"))
    weights = next(dst.rglob("weight.bin"), None)
    kind = rng.choice(["manifest", "manifest_path", "spec_bytes", "spec_length", "spec_enum", "spec_text", "weights",
                       "weights_word"])
    if kind == "manifest":
        doc, what = m.json_edit(json.loads(manifest.read_text()), rng)
        manifest.write_bytes(m.dump_json(doc))
        return f"Manifest.json: {what}"
    if kind == "manifest_path":
        doc = json.loads(manifest.read_text())
        root = doc["rootModelIdentifier"]
        doc["itemInfoEntries"][root]["path"] = rng.choice(["../../../etc/passwd", "/etc/passwd", "a\x00b", 7, None,
                                                          ["x"], "x" * 5000, "com.apple.CoreML/missing.mlmodel"])
        manifest.write_text(json.dumps(doc))
        return f"model path {doc['itemInfoEntries'][root]['path']!r:.40}"
    if kind == "spec_enum":
        return _spec_enum(spec, rng)
    if kind in ("weights", "weights_word") and weights is not None:
        data, what = (rng.choice(m.GENERIC) if kind == "weights" else m.word_set)(weights.read_bytes(), rng)
        weights.write_bytes(data)
        return f"weight.bin: {what}"
    fn = {"spec_length": m.protobuf_length_set, "spec_text": m.protobuf_text_corrupt}.get(kind) or rng.choice(m.GENERIC)
    data, what = fn(spec.read_bytes(), rng)
    spec.write_bytes(data)
    return f"model.mlmodel: {what}"


def _spec_enum(spec_path: Path, rng: random.Random) -> str:
    """A MIL tensor type's dataType or a dimension set to a value the schema does not define."""
    from coremltools.proto import Model_pb2

    spec = Model_pb2.Model()
    spec.ParseFromString(spec_path.read_bytes())
    fn = spec.mlProgram.functions["main"]
    block = fn.block_specializations[fn.opset]
    ops = [op for op in block.operations if op.outputs]
    op = rng.choice(ops)
    tt = op.outputs[0].type.tensorType
    kind = rng.choice(["dtype", "dim", "blob_offset", "op_type"])
    if kind == "dtype":
        tt.dataType = rng.choice([0, 999, 27, 1 << 20])
    elif kind == "dim" and len(tt.dimensions):
        tt.dimensions[0].constant.size = rng.choice([0, 1 << 31, 1 << 40, 1 << 62])
    elif kind == "op_type":
        op.type = rng.choice(["no_such_op", "", "const" * 30])
    else:
        for a in op.attributes.values():
            if a.WhichOneof("value") == "blobFileValue":
                a.blobFileValue.offset = rng.choice([1, 63, 1 << 40, 0])
    spec_path.write_bytes(spec.SerializeToString())
    return f"model.mlmodel: {kind} of {op.type}"


# --- the table ----------------------------------------------------------------------------------------------

def all_formats(root: Path) -> list[FuzzFormat]:
    onnx_seeds = [root / "digits.onnx", root / "digits.int8.onnx", root / "digits.int4.onnx"]
    formats = [
        FuzzFormat("onnx", ".onnx", onnx_seeds, GENERIC + [onnx_semantic, onnx_semantic, _bytes(m.protobuf_length_set), onnx_external, _bytes(m.protobuf_text_corrupt)]),
        FuzzFormat("tflite", ".tflite", [root / "digits.tflite", root / "digits.int8.tflite", root / "resizable.tflite"],
                   GENERIC + [_bytes(m.word_set), tflite_semantic, tflite_semantic, tflite_semantic]),
        FuzzFormat("gguf", ".gguf", [root / "tiny.gguf", root / "tiny.q8.gguf"],
                   GENERIC + [gguf_field, gguf_field, gguf_semantic, gguf_semantic], weight=2.5),
        FuzzFormat("pt2", ".pt2", [root / "digits.pt2"], GENERIC + [pt2_entries, pt2_entries, pt2_entries, _bytes(m.declared_size_bomb)]),
        FuzzFormat("npz", ".npz", [root / "val.npz"], GENERIC + [npz_header, npz_header, _bytes(m.declared_size_bomb)]),
        FuzzFormat("safetensors", ".safetensors", [root / "digits.safetensors"],
                   GENERIC + [safetensors_header, safetensors_header]),
        FuzzFormat("stream", ".txt", [root / "device.stream"], [stream_edit]),
        FuzzFormat("report", ".json", [root / "report.json"], [report_edit, _bytes(m.truncate), _bytes(m.chunk_edit)]),
    ]
    coreml = sorted(root.glob("digits.*.mlpackage"))
    if coreml:
        formats.append(FuzzFormat("coreml", ".mlpackage", coreml, [mlpackage_edit]))
    return formats


__all__ = ["FuzzFormat", "all_formats"]
