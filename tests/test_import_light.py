"""`import edgelift` (and the CLI's start-up) must work without torch, onnx, coremltools or transformers.

Runs in a subprocess with an import hook that makes those packages unimportable, as on a device.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

HEAVY = ["torch", "onnx", "onnxscript", "coremltools", "transformers", "safetensors", "sklearn"]

BLOCKER = textwrap.dedent(f"""
    import importlib.abc, sys
    HEAVY = {HEAVY!r}
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] in HEAVY:
                raise ImportError(f'blocked for the test: {{name}}')
    sys.meta_path.insert(0, Block())
""")


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=120)


def test_import_without_heavy_packages():
    r = run("""
        import edgelift, edgelift.errors, edgelift.core.tensors, edgelift.runtimes.ort
        loaded = sorted(m for m in sys.modules if m.split('.')[0] in HEAVY)
        print('LOADED', loaded, edgelift.__version__)
    """)
    assert r.returncode == 0, r.stderr
    assert "LOADED [] " in r.stdout


def test_heavy_packages_not_loaded_by_import_even_when_present():
    r = subprocess.run([sys.executable, "-c",
                        "import sys, edgelift, edgelift.cli; print(sorted(m for m in sys.modules "
                        f"if m.split('.')[0] in {HEAVY!r}))"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_cli_without_converter_extra_names_the_extra(tmp_path):
    """convert needs the [convert] extra and says so; inspect does not need it (own codecs) and reads the file."""
    model = tmp_path / "m.onnx"
    model.write_bytes(b"\x08\x0a\x12\x07pytorch")
    r = run(f"""
        sys.argv = ['edge', 'convert', {str(model)!r}, '--out', {str(tmp_path / 'out')!r}]
        from edgelift.cli import main
        main()
    """)
    assert r.returncode == 2, r.stderr
    assert "pip install '.[convert]' in the edgelift clone" in r.stderr
    assert "Traceback" not in r.stderr
    r = run(f"""
        sys.argv = ['edge', 'inspect', {str(model)!r}]
        from edgelift.cli import main
        main()
    """)
    assert r.returncode == 2 and "no ONNX graph" in r.stderr and "Traceback" not in r.stderr
