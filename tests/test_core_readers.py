"""The project's own bounded readers agree with the reference implementations on valid files (the
``tflite`` package's generated accessors, gguf-py, the ``jsonschema`` package), and refuse what they must."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from edgelift import errors


@pytest.fixture(scope="module")
def seeds(fuzz_seeds) -> Path:
    return fuzz_seeds


@pytest.mark.parametrize("name", ["digits.tflite", "digits.int8.tflite", "resizable.tflite"])
def test_tflite_reader_matches_the_tflite_package(seeds, name):
    tfl = pytest.importorskip("tflite")
    from edgelift.core.tflite import check_tflite

    ours = check_tflite(seeds / name)
    ref = tfl.Model.GetRootAsModel((seeds / name).read_bytes(), 0)
    sg, g = ref.Subgraphs(0), ours.subgraphs[0]
    assert len(ours.subgraphs) == ref.SubgraphsLength() and ours.n_opcodes == ref.OperatorCodesLength()
    assert len(ours.buffers) == ref.BuffersLength()
    assert [b[0] for b in ours.buffers] == [ref.Buffers(i).DataLength() for i in range(ref.BuffersLength())]
    assert g.inputs == list(sg.InputsAsNumpy()) and g.outputs == list(sg.OutputsAsNumpy())
    for i, t in enumerate(g.tensors):
        r = sg.Tensors(i)
        assert (t.shape, t.type, t.buffer) == (list(r.ShapeAsNumpy()) if r.ShapeLength() else [], r.Type(), r.Buffer())
        assert t.name == r.Name().decode() and t.shape_signature == (
            list(r.ShapeSignatureAsNumpy()) if r.ShapeSignatureLength() else [])
        q = r.Quantization()
        assert t.scales == (list(q.ScaleAsNumpy()) if q is not None and q.ScaleLength() else [])
        assert t.zero_points == (list(q.ZeroPointAsNumpy()) if q is not None and q.ZeroPointLength() else [])
    assert ours.opcodes == [max(ref.OperatorCodes(i).BuiltinCode(), ref.OperatorCodes(i).DeprecatedBuiltinCode())
                            for i in range(ref.OperatorCodesLength())]
    assert ours.version == ref.Version() and ours.description == (ref.Description() or b"").decode()
    assert ours.metadata == {ref.Metadata(i).Name().decode(): ref.Buffers(ref.Metadata(i).Buffer()).DataAsNumpy().tobytes()
                             for i in range(ref.MetadataLength())}
    for k, (opcode, ins, outs) in enumerate(g.operators):
        r = sg.Operators(k)
        assert (opcode, ins, outs) == (r.OpcodeIndex(), list(r.InputsAsNumpy()), list(r.OutputsAsNumpy()))


def test_tflite_metadata_matches_the_tflite_package(tmp_path):
    """Model.metadata entries (where edgelift records resizable dims) read as the schema's own reader sees them;
    a large entry is skipped, and a malformed record means no resizable dims."""
    tfl = pytest.importorskip("tflite")
    from edgelift.converters.tflite.builder import TFLiteBuilder
    from edgelift.core.tflite import DYNAMIC_DIMS_KEY, MAX_METADATA_BYTES, check_tflite, dynamic_dim_steps

    b = TFLiteBuilder()
    x, y = b.tensor("x", (1, 4)), b.tensor("y", (1, 4))
    b.inputs, b.outputs = [x], [y]
    b.op("RELU", [x], [y])
    b.metadata = {DYNAMIC_DIMS_KEY: b'{"x": {"1": 4}}', "big": b"\0" * (MAX_METADATA_BYTES + 1), "odd": b"{"}
    path = tmp_path / "m.tflite"
    path.write_bytes(b.finish())
    ours = check_tflite(path)
    ref = tfl.Model.GetRootAsModel(path.read_bytes(), 0)
    listed = {ref.Metadata(i).Name().decode(): ref.Buffers(ref.Metadata(i).Buffer()).DataAsNumpy().tobytes()
              for i in range(ref.MetadataLength())}
    assert ours.metadata == {k: v for k, v in listed.items() if k != "big"} and len(listed) == 3
    assert dynamic_dim_steps(ours) == {"x": {1: 4}}
    ours.metadata[DYNAMIC_DIMS_KEY] = b'["x"]'
    assert dynamic_dim_steps(ours) == {}


def test_tflite_reader_refuses_out_of_range_indices(seeds, tmp_path):
    """A subgraph output of -1 makes LiteRT free memory twice (SIGABRT): refused before LiteRT sees it."""
    from edgelift.core.tflite import check_tflite
    from tests.fuzzing.formats import tflite_semantic

    refused = 0
    for i in range(40):
        dst = tmp_path / f"m{i}.tflite"
        what = tflite_semantic(seeds / "digits.int8.tflite", dst, random.Random(i))
        try:
            check_tflite(dst)
        except errors.ModelFormatError as e:
            refused += 1
            assert str(dst) in str(e)
        else:
            assert "shape dim set to" in what or "8-byte word" in what or "4-byte word" in what, what
    assert refused >= 20


def test_tflite_reader_truncation_is_a_typed_error(seeds, tmp_path):
    from edgelift.core.tflite import read_tflite

    data = (seeds / "digits.tflite").read_bytes()
    for cut in (8, 64, len(data) // 2, len(data) - 40):
        (tmp_path / "cut.tflite").write_bytes(data[:cut])
        with pytest.raises(errors.ModelFormatError):
            read_tflite(tmp_path / "cut.tflite")


def test_gguf_reader_matches_gguf_py(seeds):
    gguf = pytest.importorskip("gguf")
    from edgelift.core.gguf import read_gguf_info

    for name in ("tiny.gguf", "tiny.q8.gguf"):
        ours = read_gguf_info(seeds / name)
        ref = gguf.GGUFReader(seeds / name)
        assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
        assert [t.shape for t in ours.tensors] == [tuple(int(d) for d in t.shape) for t in ref.tensors]
        assert [ours.data_offset + t.offset for t in ours.tensors] == [int(t.data_offset) for t in ref.tensors]
        assert [t.nbytes for t in ours.tensors] == [int(t.n_bytes) for t in ref.tensors]
        assert ours.metadata["llama.block_count"] == int(ref.fields["llama.block_count"].parts[-1][0])


@pytest.mark.parametrize("alignment,ok", [(32, True), (64, True), (1, False), (2, False), (8, False), (16, False)])
def test_gguf_alignment_llama_cpp_can_hold(tmp_path, alignment, ok):
    """llama.cpp asserts 32-byte aligned tensor data: smaller alignments are refused before it sees the file."""
    from edgelift.core.gguf import read_gguf_info
    from tests.fuzzing.seeds import tiny_llama_gguf

    path = tiny_llama_gguf(tmp_path / "a.gguf", matrix_type="Q8_0", alignment=alignment)
    if ok:
        assert read_gguf_info(path).data_offset % alignment == 0
    else:
        with pytest.raises(errors.ModelFormatError, match="alignment"):
            read_gguf_info(path)


def test_schema_validator_agrees_with_jsonschema(seeds):
    """The dependency-free validator accepts what jsonschema accepts and refuses what it refuses, on a real
    report and 100 mutations of it."""
    jsonschema = pytest.importorskip("jsonschema")
    from edgelift.core.json_schema import SchemaViolation, validate
    from edgelift.profilers.report import profile_schema
    from tests.fuzzing.mutate import json_edit

    schema = profile_schema()
    base = json.loads((seeds / "report.json").read_text())
    validate(base, schema)
    jsonschema.validate(base, schema)
    disagreements = []
    for i in range(100):
        doc, what = json_edit(json.loads(json.dumps(base)), random.Random(i))
        if "bomb" in what or "__bomb__" in json.dumps(doc):
            continue
        ours = theirs = True
        try:
            validate(doc, schema)
        except SchemaViolation:
            ours = False
        try:
            jsonschema.validate(doc, schema)
        except jsonschema.ValidationError:
            theirs = False
        if ours != theirs and not (theirs and _integral_float_at(doc, what)):
            disagreements.append(what)
    assert not disagreements, disagreements[:5]


def _integral_float_at(doc, what: str) -> bool:
    """Whether the edit ``what`` ("huge at runs/0/...") put a float with no fractional part (1e308) where it is:
    jsonschema counts it as an integer, our validator deliberately does not (reports write integers as
    integers, and the readers use them as Python ints)."""
    path = what.split(" at ", 1)[1] if " at " in what else ""
    value = doc
    for part in filter(None, path.split("/")):
        try:
            value = value[int(part)] if isinstance(value, list) else value[part]
        except (KeyError, IndexError, ValueError, TypeError):
            return False
    return isinstance(value, float) and value.is_integer()


def test_json_depth_is_refused_before_parsing():
    from edgelift.core.json_schema import loads

    assert loads("[[[1]]]") == [[[1]]]
    assert loads('["[[[[", {"a": "]]]"}]') == ["[[[[", {"a": "]]]"}]  # brackets inside strings do not count
    with pytest.raises(ValueError, match="nested deeper"):
        loads("[" * 100_000 + "]" * 100_000)


def test_npz_header_claiming_a_huge_shape(tmp_path):
    from edgelift.core.tensors import read_npz
    from tests.fuzzing.mutate import write_zip
    import struct

    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (16777216, 1, 32, 32), }"
    header = header.ljust(len(header) + (-(len(header) + 11) % 64)) + "\n"
    body = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + np.zeros(16, np.float32).tobytes()
    (tmp_path / "x.npz").write_bytes(write_zip([("x.npy", body)]))
    with pytest.raises(errors.CalibrationError, match="header claims shape"):
        read_npz(tmp_path / "x.npz")


def test_random_inputs_are_bounded():
    from edgelift.core.tensors import TensorSpec, random_input_set

    with pytest.raises(errors.CalibrationError, match="bytes"):
        random_input_set([TensorSpec("x", ("batch", 3, 1 << 31, 1 << 31), "float32")], 1)
    assert random_input_set([TensorSpec("x", ("batch", 3, 8, 8), "float32")], 2).arrays["x"].shape == (2, 3, 8, 8)
