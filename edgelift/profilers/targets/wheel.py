"""The wheel ``--install`` sends to a device: this installation's own code, packed here.

A device must run the code the workstation runs, and must never resolve our package by name on a
registry (a name can be taken by someone else: ``edge-sdk`` was). So the wheel is packed from the
installed ``edgelift`` package itself — its files, and the metadata pip recorded when it was installed
(dependencies and extras) — whether that install is a clone's editable one or a wheel's. Packing is
deterministic (sorted entries, fixed timestamps), so the same code gives the same bytes and the device
keeps it by content hash. Only the dependencies (numpy, onnxruntime, ...) come from the device's index.
"""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from ...core.atomic import atomic_write_bytes
from ...errors import InvalidOptionError

DIST = "edgelift"
_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can carry: the same bytes on every build
_WHEEL_FILE = "Wheel-Version: 1.0\nGenerator: edgelift\nRoot-Is-Purelib: true\nTag: py3-none-any\n"


@dataclass(frozen=True)
class LocalWheel:
    path: Path
    sha256: str

    @property
    def name(self) -> str:
        return self.path.name


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _package_files(package_dir: Path) -> list[tuple[str, bytes]]:
    out = []
    for p in sorted(package_dir.rglob("*")):
        rel = p.relative_to(package_dir.parent)
        if p.is_file() and "__pycache__" not in rel.parts and p.suffix not in (".pyc", ".pyo") \
                and not any(part.startswith(".") for part in rel.parts):
            out.append((rel.as_posix(), p.read_bytes()))
    return out


def pack_wheel() -> bytes:
    """This installation as a ``py3-none-any`` wheel (bytes)."""
    import edgelift

    # the installed dist-info first: a clone's folder may also hold a build's stale edgelift.egg-info
    found = sorted(metadata.distributions(name=DIST), key=lambda d: d.read_text("METADATA") is None)
    dist = found[0] if found else None
    meta = dist and (dist.read_text("METADATA") or dist.read_text("PKG-INFO"))
    if not meta:
        raise InvalidOptionError(f"{DIST} is imported from a folder without an install record: install it "
                                 "(pip install . in the clone, or make wheel) before --install")
    version = edgelift.__version__
    info = f"{DIST}-{version}.dist-info"
    entries = _package_files(Path(edgelift.__file__).resolve().parent)
    entries += [(f"{info}/METADATA", meta.encode()), (f"{info}/WHEEL", _WHEEL_FILE.encode()),
                (f"{info}/entry_points.txt", (dist.read_text("entry_points.txt") or "").encode())]
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in entries) + f"{info}/RECORD,,\n"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in [*entries, (f"{info}/RECORD", record.encode())]:
            zi = zipfile.ZipInfo(name, _EPOCH)
            zi.compress_type, zi.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
            z.writestr(zi, data)
    return buf.getvalue()


def local_wheel(cache_dir: Path) -> LocalWheel:
    """The packed wheel, kept in ``cache_dir`` by content (packed again only when the code changed)."""
    import edgelift

    data = pack_wheel()
    digest = hashlib.sha256(data).hexdigest()
    path = Path(cache_dir) / digest[:16] / f"{DIST}-{edgelift.__version__}-py3-none-any.whl"
    if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
    return LocalWheel(path, digest)
