"""A .pt2 never runs code from the file: a payload planted in every place torch.export.load would run it
is refused by name, and never runs.

Each case is checked twice: plain ``torch.export.load`` (then ``ep.module()`` and a forward) runs the payload
(it only creates a folder) — proof that the planted file is a real attack, so this test can fail — and
``edge inspect`` / ``edgelift.convert`` refuse the same file (exit 2, a typed error) and the payload does not run.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

class _MkdirPayload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _payload(marker: Path) -> bytes:
    data = pickle.dumps(_MkdirPayload(str(marker)))
    return data + b"\0" * (-len(data) % 8)  # a whole number of elements: torch first maps it as a tensor file


def _rewrite(src: Path, dst: Path, edit) -> Path:
    with zipfile.ZipFile(src) as z:
        entries = {i.filename: z.read(i) for i in z.infolist()}
    root = next(iter(entries)).split("/")[0]
    edit(entries, root)
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return dst


def _tensor_meta(entries: dict, root: str) -> dict:
    weights = json.loads(entries[f"{root}/data/weights/model_weights_config.json"])["config"]
    return next(iter(weights.values()))["tensor_meta"]


def _constant(kind: str):
    def edit(entries: dict, root: str, marker: Path) -> None:
        key = f"{root}/data/constants/model_constants_config.json"
        cfg = json.loads(entries[key])
        cfg["config"]["planted"] = {"path_name": f"{kind}_0", "is_param": False, "use_pickle": False,
                                    "tensor_meta": _tensor_meta(entries, root)}
        entries[key] = json.dumps(cfg).encode()
        entries[f"{root}/data/constants/{kind}_0"] = _payload(marker)
    return edit


def _pickled_weight(entries: dict, root: str, marker: Path) -> None:
    key = f"{root}/data/weights/model_weights_config.json"
    cfg = json.loads(entries[key])
    first = next(iter(cfg["config"]))
    cfg["config"][first]["use_pickle"] = True
    entries[f"{root}/data/weights/{cfg['config'][first]['path_name']}"] = _payload(marker)
    entries[key] = json.dumps(cfg).encode()


def _sample_inputs(entries: dict, root: str, marker: Path) -> None:
    entries[f"{root}/data/sample_inputs/model.pt"] = _payload(marker)


def _shape_expression(entries: dict, root: str, marker: Path) -> None:
    """A symbolic size whose expression text sympy would eval."""
    key = f"{root}/models/model.json"
    text = entries[key].decode()
    assert "Symbol('s" in text
    entries[key] = text.replace("Symbol('s", f"__import__('os').mkdir({str(marker)!r}) or Symbol('s", 1).encode()


def _guard(entries: dict, root: str, marker: Path) -> None:
    """guards_code: pasted into Python source that ep.module() exec-s."""
    key = f"{root}/models/model.json"
    program = json.loads(entries[key])
    program["guards_code"] = [f"__import__('os').mkdir({str(marker)!r}) is None"]
    entries[key] = json.dumps(program).encode()


PAYLOADS = {
    "opaque_obj constant": (_constant("opaque_obj"), "static"),
    "custom_obj constant": (_constant("custom_obj"), "static"),
    "pickled weight": (_pickled_weight, "static"),
    "sample inputs": (_sample_inputs, "static"),
    "shape expression": (_shape_expression, "dynamic"),
    "guards code": (_guard, "dynamic"),
}
# the archive kinds torch itself runs (a custom_obj payload goes through torchbind's own unpickler, which rejects
# a Python pickle: it is refused by name all the same)
TORCH_RUNS_IT = {"opaque_obj constant", "pickled weight", "sample inputs", "shape expression", "guards code"}


@pytest.fixture(scope="module")
def programs(tmp_path_factory, digits_dir) -> dict[str, Path]:
    """The digits CNN (static shapes) and a small program with a symbolic batch (shape expressions, guards)."""
    d = tmp_path_factory.mktemp("pt2")

    class Batchwise(torch.nn.Module):
        def forward(self, x):
            return (x.relu() + 1)[: x.shape[0] // 2] * 2

    batch = torch.export.Dim("half", min=2, max=32)
    ep = torch.export.export(Batchwise(), (torch.randn(6, 3),), dynamic_shapes=({0: 2 * batch},))
    torch.export.save(ep, d / "dynamic.pt2")
    return {"static": digits_dir / "digits.pt2", "dynamic": d / "dynamic.pt2"}


def _plain_torch_load(path: Path) -> None:
    """What a user without edgelift does: torch.export.load, then the module and a forward pass."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ep = torch.export.load(str(path))
            args = ep.example_inputs[0] if ep.example_inputs else (torch.randn(6, 3),)
            ep.module()(*args)
        except Exception:  # the payload runs before the load fails (or succeeds)
            pass


@pytest.mark.parametrize("kind", list(PAYLOADS))
def test_planted_payload_is_refused_and_never_runs(programs, tmp_path, kind):
    from typer.testing import CliRunner

    import edgelift
    from edgelift import errors
    from edgelift.cli import app

    edit, program = PAYLOADS[kind]
    marker = tmp_path / "PAYLOAD_RAN"
    evil = _rewrite(programs[program], tmp_path / "evil.pt2", lambda e, r: edit(e, r, marker))

    if kind in TORCH_RUNS_IT:  # control: the file really is an attack on torch.export.load
        _plain_torch_load(evil)
        assert marker.exists(), f"torch.export.load did not run the {kind} payload: the test would prove nothing"
        marker.rmdir()

    r = CliRunner().invoke(app, ["inspect", str(evil)])
    assert not marker.exists(), f"edge inspect ran the {kind} payload"
    assert r.exit_code == 2 and r.stderr.strip().startswith("error:") and len(r.stderr.strip().splitlines()) == 1, \
        r.output
    with pytest.raises(errors.ModelFormatError):
        edgelift.convert(evil, out=tmp_path / "out")
    assert not marker.exists(), f"edge convert ran the {kind} payload"
    assert not (tmp_path / "out").exists()


def test_refusals_name_what_they_refuse(programs, tmp_path):
    import edgelift
    from edgelift import errors

    marker = tmp_path / "x"
    cases = {"opaque_obj constant": "opaque Python object", "custom_obj constant": "torchbind custom object",
             "pickled weight": "stored as a pickle", "sample inputs": "arbitrary unpickling",
             "shape expression": "sympy would eval it", "guards code": "torch would exec it"}
    for kind, words in cases.items():
        edit, program = PAYLOADS[kind]
        evil = _rewrite(programs[program], tmp_path / f"{kind.split()[0]}.pt2", lambda e, r: edit(e, r, marker))
        with pytest.raises(errors.ModelFormatError, match=words):
            edgelift.inspect(evil)


def test_aoti_code_and_unknown_entries_are_refused(programs, tmp_path):
    import edgelift
    from edgelift import errors

    def add(name: str):
        return lambda e, r: e.__setitem__(f"{r}/{name}", b"\x7fELF" + b"\0" * 60)

    so = _rewrite(programs["static"], tmp_path / "aoti.pt2", add("data/aotinductor/model/model.so"))
    with pytest.raises(errors.ModelFormatError, match="AOTInductor compiled code"):
        edgelift.inspect(so)
    other = _rewrite(programs["static"], tmp_path / "other.pt2", add("serialized_state_dict.pt"))
    with pytest.raises(errors.ModelFormatError, match="not part of a plain program"):
        edgelift.inspect(other)


def test_graph_target_outside_the_operator_allowlist(programs, tmp_path):
    """A node target resolved by getattr from torch: torch.os.system is reachable and would run on forward."""
    import edgelift
    from edgelift import errors

    def edit(entries: dict, root: str) -> None:
        key = f"{root}/models/model.json"
        entries[key] = entries[key].replace(b'"torch.ops.aten.relu.default"', b'"torch.os.system"', 1)

    evil = _rewrite(programs["dynamic"], tmp_path / "target.pt2", edit)
    with pytest.raises(errors.ModelFormatError, match="torch.os.system"):
        edgelift.inspect(evil)


def test_plain_programs_still_load(programs):
    """The checks refuse nothing torch.export.save writes for a plain model (static and symbolic shapes)."""
    import edgelift

    for path in programs.values():
        report = edgelift.inspect(path)
        assert report.format == "pt2" and report.inputs


def test_non_utf8_entry_name(programs, tmp_path):
    import edgelift
    from edgelift import errors
    from tests.fuzzing.mutate import non_utf8_name

    bad = tmp_path / "names.pt2"
    bad.write_bytes(non_utf8_name(programs["static"].read_bytes(), "archive_version"))
    with pytest.raises(errors.ModelFormatError):
        edgelift.inspect(bad)
