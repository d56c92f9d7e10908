"""GGUF through llama.cpp (llama-cpp-python), on the real SmolLM2-135M-Instruct Q4_1 file."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

import edgelift
from edgelift import errors
from edgelift.cli import app

pytest.importorskip("llama_cpp")

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def smol(smollm2_gguf):
    with edgelift.load(smollm2_gguf, threads=2) as m:
        yield m


def test_signature_and_logits(smol):
    assert smol.backend == "llama.cpp" and smol.architecture == "llama"
    assert smol.inputs[0].dtype == "int32" and smol.outputs[0].shape == (None, 49152)
    ids = smol.tokenize(PROMPT)
    logits = smol.run(ids)["logits"]
    assert logits.shape == (len(ids), 49152) and np.isfinite(logits).all()
    # the same prefix gives the same logits (the KV cache is reset between runs)
    np.testing.assert_allclose(smol.run(ids[:3])["logits"], logits[:3], rtol=1e-4, atol=1e-3)


def test_greedy_generation_follows_the_logits(smol):
    ids = smol.tokenize(PROMPT)
    first = int(smol.run(ids)["logits"][-1].argmax())
    text = smol.generate(PROMPT, max_tokens=8)
    assert text == smol.generate(PROMPT, max_tokens=8)  # greedy is deterministic
    assert "".join(smol.generate(PROMPT, max_tokens=8, stream=True)) == text
    assert text.startswith(smol.detokenize([first]))
    assert "Paris" in text


def test_tokenizer_round_trip(smol):
    text = "Edge devices run small models."
    assert smol.detokenize(smol.tokenize(text, add_bos=False)) == text


def test_embeddings_need_the_option(smol):
    with pytest.raises(errors.InvalidOptionError, match="embedding=True"):
        smol.embed("hello")


def test_token_dtype_is_checked(smol):
    with pytest.raises(errors.InputMismatchError, match="int32"):
        smol.run(np.array([1, 2, 3], np.int64))


def test_unknown_architecture(tmp_path):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "alien.gguf"
    w = gguf.GGUFWriter(str(path), "edgealien")
    w.add_tensor("token_embd.weight", np.zeros((8, 4), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(errors.ModelFormatError, match="edgealien"):
        edgelift.load(path)


def test_cli_prompt(smollm2_gguf):
    r = CliRunner().invoke(app, ["run", str(smollm2_gguf), "--prompt", PROMPT, "-n", "6", "--threads", "2"])
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith(PROMPT) and len(r.stdout) > len(PROMPT) + 3


def test_embeddings(smollm2_gguf):
    with edgelift.load(smollm2_gguf, embedding=True, threads=2) as m:
        e = m.embed("hello world")
        # SmolLM2 has no pooling: one 576-wide embedding per token
        assert e.shape == (len(m.tokenize("hello world")), 576)
        np.testing.assert_allclose(m.embed("hello world"), e, rtol=1e-5)
        assert not np.allclose(m.embed("goodbye world")[0], e[0])


def test_generation_arguments_are_checked(smol):
    with pytest.raises(errors.InvalidOptionError, match="empty"):
        smol.generate("")
    with pytest.raises(errors.InvalidOptionError, match="max_tokens"):
        smol.generate("hi", max_tokens=0)
    with pytest.raises(errors.InvalidOptionError, match="context holds 512"):
        smol.generate("word " * 600, max_tokens=4)
    with pytest.raises(errors.InputMismatchError, match="outside the vocabulary"):
        smol.run(np.array([1, 49152], np.int32))


def _patch_in_place(path, key: str) -> None:
    """Corrupt one header field of a GGUF copy, in place, through the gguf package's memory map."""
    gguf = pytest.importorskip("gguf")
    r = gguf.GGUFReader(str(path), "r+")
    field = r.fields[key]
    if key.endswith("block_count"):
        field.parts[field.data[0]][0] = 0
        return
    # make one vocabulary entry a copy of another of the same length
    strings = [field.parts[i] for i in field.data]
    by_len: dict[int, object] = {}
    for s in strings[1000:]:
        if len(s) in by_len:
            s[:] = by_len[len(s)]
            return
        by_len[len(s)] = s


@pytest.mark.parametrize("key, needle", [
    ("llama.block_count", "block_count is 0"),
    ("tokenizer.ggml.tokens", "repeats tokens"),
])
def test_headers_llama_cpp_would_abort_on(smollm2_gguf, tmp_path, key, needle):
    """llama.cpp aborts the process (GGML_ASSERT) on these; our header check refuses them first."""
    import shutil

    bad = tmp_path / "bad.gguf"
    shutil.copy(smollm2_gguf, bad)
    _patch_in_place(bad, key)
    with pytest.raises(errors.ModelFormatError, match=needle):
        edgelift.load(bad)
