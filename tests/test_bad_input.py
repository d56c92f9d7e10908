"""Bad input: one clear line, exit code 2 from the CLI, typed exceptions from the API, nothing left in --out."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import edgelift
from edgelift import errors
from edgelift.cli import app
from tests.conftest import listing

runner = CliRunner()


def run_cli(*args: str):
    r = runner.invoke(app, list(args))
    return r.exit_code, (r.stderr or "") + (r.stdout or "")


def assert_clean_failure(args, out: Path, *needles: str):
    code, text = run_cli(*args, "--out", str(out))
    assert code == 2, text
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert lines[0].startswith("error:"), text
    joined = " ".join(text.split())
    for n in needles:
        assert n in joined, text
    assert not out.exists(), listing(out)  # no partial artifacts, no staging dirs, no empty --out


@pytest.fixture
def out(tmp_path) -> Path:
    return tmp_path / "out"


def test_missing_file(out):
    assert_clean_failure(["convert", "nope/model.onnx"], out, "no such file")


def test_directory_that_is_not_a_model(tmp_path, out):
    d = tmp_path / "somedir"
    d.mkdir()
    assert_clean_failure(["convert", str(d)], out, "is a directory, not a model")


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.9, 0.999])
def test_truncated_onnx(digits_result, tmp_path, out, cut):
    data = Path(digits_result.artifact("none").path).read_bytes()
    bad = tmp_path / "cut.onnx"
    bad.write_bytes(data[: int(len(data) * cut)])
    assert_clean_failure(["convert", str(bad)], out, "cut.onnx")
    with pytest.raises(errors.ModelFormatError):
        edgelift.convert(bad, out=out)


def test_random_bytes_file(tmp_path, out):
    bad = tmp_path / "noise.onnx"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(errors.ModelFormatError):
        edgelift.convert(bad, out=out)
    assert listing(out) == []


@pytest.mark.parametrize("cut", [0.3, 0.8])
def test_truncated_pt2(digits_dir, tmp_path, out, cut):
    data = (digits_dir / "digits.pt2").read_bytes()
    bad = tmp_path / "cut.pt2"
    bad.write_bytes(data[: int(len(data) * cut)])
    assert_clean_failure(["convert", str(bad)], out, "cut.pt2")


def _rewrite_zip(src: Path, dst: Path, edit) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = edit(info.filename, zin.read(info))
            zout.writestr(info, data)


def test_corrupted_pt2_weights_fail_crc(digits_dir, tmp_path, out):
    bad = tmp_path / "flipped.pt2"
    raw = bytearray((digits_dir / "digits.pt2").read_bytes())
    with zipfile.ZipFile(digits_dir / "digits.pt2") as z:
        info = next(i for i in z.infolist() if "weights/weight_" in i.filename)
    h = info.header_offset  # local header: name and extra lengths at bytes 26..30
    data_at = h + 30 + int.from_bytes(raw[h + 26:h + 28], "little") + int.from_bytes(raw[h + 28:h + 30], "little")
    raw[data_at + 5] ^= 0xFF
    bad.write_bytes(bytes(raw))
    with pytest.raises(errors.ModelFormatError, match="corrupted"):
        edgelift.convert(bad, out=out)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pt2_needing_arbitrary_unpickling_is_refused(digits_dir, tmp_path, out, capsys):
    """A .pt2 whose sample inputs are an arbitrary pickle: torch.export.load would fall back to
    weights_only=False and execute it; we refuse before torch sees it."""
    buf = io.BytesIO()
    pickle.dump(_Evil(), buf)
    bad = tmp_path / "evil.pt2"
    _rewrite_zip(digits_dir / "digits.pt2", bad,
                 lambda n, d: buf.getvalue() if n.endswith("sample_inputs/model.pt") else d)
    with pytest.raises(errors.ModelFormatError, match="unpickling"):
        edgelift.convert(bad, out=out)
    assert "pwned" not in capsys.readouterr().out


def test_pt2_with_pickled_weights_is_refused(digits_dir, tmp_path, out):
    bad = tmp_path / "pickled.pt2"
    _rewrite_zip(digits_dir / "digits.pt2", bad,
                 lambda n, d: d.replace(b'"use_pickle": false', b'"use_pickle": true', 1)
                 .replace(b'"use_pickle":false', b'"use_pickle":true', 1)
                 if n.endswith("model_weights_config.json") else d)
    with pytest.raises(errors.ModelFormatError, match="pickle"):
        edgelift.convert(bad, out=out)


def test_zip_that_is_not_pt2(tmp_path, out):
    z = tmp_path / "model.pt2"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("hello.txt", "hi")
    assert_clean_failure(["convert", str(z)], out, "not a torch.export .pt2 program")


def test_factory_that_raises(tmp_path, out, monkeypatch):
    (tmp_path / "badfactory.py").write_text("def make():\n    raise RuntimeError('no GPU here')\n")
    monkeypatch.chdir(tmp_path)
    assert_clean_failure(["convert", "badfactory.py:make", "--input-shape", "x=1x3x8x8"], out,
                         "factory badfactory.py:make raised RuntimeError: no GPU here")


def test_factory_weights_that_do_not_fit(digits_dir, tmp_path, out):
    from safetensors.torch import save_file
    import torch

    w = tmp_path / "wrong.safetensors"
    save_file({"conv1.weight": torch.zeros(16, 1, 3, 3)}, str(w))
    assert_clean_failure(["convert", "examples.digits.model:build_model", "--weights", str(w),
                          "--input-shape", "x=1x1x8x8"], out, "does not fit the factory's model", "missing")


def test_factory_without_shapes(out):
    assert_clean_failure(["convert", "examples.digits.model:build_model"], out, "--input-shape")


def test_unknown_quantize_mode(digits_dir, out):
    assert_clean_failure(["convert", str(digits_dir / "digits.pt2"), "-q", "int3"], out,
                         "unknown quantization mode 'int3'", "int8", "int4")


def test_unknown_target(digits_dir, out):
    assert_clean_failure(["convert", str(digits_dir / "digits.pt2"), "--to", "tensorrt"], out,
                         "unknown target format 'tensorrt'", "onnx")


def test_int8_without_calibration_refused(digits_dir, out):
    assert_clean_failure(["convert", str(digits_dir / "digits.pt2"), "-q", "none", "-q", "int8"], out,
                         "int8 needs calibration data", "--calibration random")


@pytest.mark.parametrize(
    "arrays, needle",
    [
        ({"image": np.zeros((4, 1, 8, 8), np.float32)}, "input names do not match"),
        ({"x": np.zeros((4, 1, 6, 6), np.float32)}, "samples of shape (1, 6, 6)"),
        ({"x": np.zeros((4, 1, 8, 8), np.int64)}, "holds int64 data but the model input is float32"),
        ({"x": np.zeros((4, 1, 8, 8), np.float32), "labels": np.zeros(3, np.int64)}, "'labels' must be"),
    ],
)
def test_calibration_mismatch(digits_dir, tmp_path, out, arrays, needle):
    f = tmp_path / "calib.npz"
    np.savez(f, **arrays)
    assert_clean_failure(["convert", str(digits_dir / "digits.pt2"), "-q", "int8", "--calibration", str(f)],
                         out, needle)


def test_calibration_not_an_npz(digits_dir, tmp_path, out):
    f = tmp_path / "calib.npz"
    f.write_text("not a zip")
    assert_clean_failure(["convert", str(digits_dir / "digits.pt2"), "-q", "int8", "--calibration", str(f)],
                         out, "not a readable .npz")


def test_output_dir_not_writable(digits_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, text = run_cli("convert", str(digits_dir / "digits.pt2"), "--out", str(blocker / "sub"))
    assert code == 2 and "cannot write to output directory" in text


def test_failure_in_a_later_mode_commits_nothing(digits_dir, tmp_path, monkeypatch):
    """fp32 succeeds, int4 fails: the finished fp32 file must not appear in --out either."""
    from edgelift.converters import quantize

    def boom(model, opts):
        raise errors.ConversionError("simulated failure")

    monkeypatch.setitem(quantize.QUANT_MODES, "int4",
                        quantize.QuantMode("int4", "int4", "x", False, boom))
    out = tmp_path / "o"
    with pytest.raises(errors.ConversionError):
        edgelift.convert(digits_dir / "digits.pt2", quantize=["none", "int4"], out=out / "deeper")
    assert not out.exists()


def test_inspect_bad_files(tmp_path):
    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 3)
    code, text = run_cli("inspect", str(bad))
    assert code == 2 and text.startswith("error:")
    code, text = run_cli("inspect", str(tmp_path / "missing.onnx"))
    assert code == 2 and "no such file" in text


def test_factory_weights_of_the_wrong_shape(tmp_path, out):
    from safetensors.torch import save_file

    from examples.digits.model import DigitsCNN

    state = DigitsCNN().state_dict()
    state["fc2.weight"] = state["fc2.weight"][:5]
    w = tmp_path / "w5.safetensors"
    save_file(state, str(w))
    assert_clean_failure(["convert", "examples.digits.model:build_model", "--weights", str(w),
                          "--input-shape", "x=1x1x8x8"], out, "does not fit the factory's model", "size mismatch")


@pytest.mark.parametrize("name", ["a/b", "../../escaped", ".hidden", "x y"])
def test_unsafe_name_refused(digits_dir, tmp_path, out, name):
    assert_clean_failure(["convert", str(digits_dir / "digits.pt2"), "--name", name], out, "must be a plain file name")
    assert not list(tmp_path.rglob("*.onnx"))


def test_labels_must_be_one_per_sample(digits_dir, tmp_path, out):
    v = np.load(digits_dir / "val.npz")
    f = tmp_path / "val2d.npz"
    np.savez(f, x=v["x"], labels=v["labels"][:, None])
    assert_clean_failure(["convert", str(digits_dir / "digits.pt2"), "--validation", str(f)], out, "'labels' must be")


@pytest.mark.parametrize("opset", ["5", "99"])
def test_opset_out_of_range(digits_dir, out, opset):
    assert_clean_failure(["convert", str(digits_dir / "digits.pt2"), "--opset", opset], out, f"--opset {opset} unsupported")


def test_multiline_factory_error_is_one_line(tmp_path, out, monkeypatch):
    (tmp_path / "ml.py").write_text("def make():\n    raise ValueError('line one\\nline two')\n")
    monkeypatch.chdir(tmp_path)
    code, text = run_cli("convert", "ml.py:make", "--input-shape", "x=1x3", "--out", str(out))
    assert code == 2 and len(text.strip().splitlines()) == 1 and "line one" in text


def test_operator_onnx_does_not_define(tmp_path, out):
    from onnx import TensorProto, helper, save

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["h"], name="ok"),
                           helper.make_node("FancyGelu", ["h"], ["y"], name="act1")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    f = tmp_path / "fancy.onnx"
    save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(f))
    with pytest.raises(errors.UnsupportedOperatorError) as ei:
        edgelift.convert(f, out=out)
    assert ei.value.nodes == [("act1", "FancyGelu")]
    assert_clean_failure(["convert", str(f)], out, "FancyGelu (act1)")


def test_markup_characters_in_paths_are_printed_verbatim(digits_dir, tmp_path):
    out = tmp_path / "o[red]"
    code, text = run_cli("convert", str(digits_dir / "digits.pt2"), "--out", str(out))
    assert code == 0, text
    assert f"report: {out}/conversion.json" in text


def test_internal_error_is_one_line_with_its_own_exit_code(monkeypatch, capsys, tmp_path):
    """A bug (an exception that is not an EdgeError) reaches the user as one line, exit 70, and how to get the
    traceback; never as a traceback, never as exit 2 (which means: your input)."""
    import sys

    import edgelift.converters.inspect as inspect_module
    from edgelift.cli import INTERNAL_ERROR_EXIT, main

    def broken(path):
        raise KeyError("a bug")

    monkeypatch.setattr(inspect_module, "inspect", broken)
    monkeypatch.setattr(sys, "argv", ["edge", "inspect", str(tmp_path / "any.onnx")])
    monkeypatch.delenv("EDGELIFT_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == INTERNAL_ERROR_EXIT == 70
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: internal error (KeyError") and "EDGELIFT_DEBUG=1" in err
    assert "Traceback" not in err
    monkeypatch.setenv("EDGELIFT_DEBUG", "1")
    with pytest.raises(KeyError):
        main()
