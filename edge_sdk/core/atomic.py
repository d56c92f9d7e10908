"""Write artifacts so that a failed run leaves nothing half-written.

Files are produced inside a staging directory next to their destination (same file system,
so the final ``os.replace`` is atomic) and moved into place only when all of them are complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType

from ..errors import OutputError


def ensure_writable_dir(out_dir: str | Path) -> Path:
    """Prove ``out_dir`` can be written (or created) before any long work starts; create nothing."""
    d = Path(out_dir)
    existing = d
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, "a path component is a file, not a directory")
        fd, probe = tempfile.mkstemp(prefix=".edge-write-test-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(
            f"cannot write to output directory {d} ({e.strerror or e}); choose another --out"
        ) from e
    return d


class StagingDir:
    """A hidden temp directory in ``out_dir``; ``commit(name)`` moves a finished file into place.

    Leaving the ``with`` block removes whatever was not committed, including on errors and Ctrl-C.
    """

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = ensure_writable_dir(out_dir)
        # directories we create, deepest first, removed again if nothing gets committed
        self._created = [p for p in [self.out_dir, *self.out_dir.parents] if not p.exists()]
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=".edge-staging-", dir=self.out_dir))
        self._committed = False

    def __enter__(self) -> "StagingDir":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        if not self._committed:
            for d in self._created:
                try:
                    d.rmdir()
                except OSError:
                    break

    def file(self, name: str) -> Path:
        return self.path / name

    def commit(self, *names: str) -> list[Path]:
        """Move staged files to ``out_dir`` (sidecars first, so the main file appears last)."""
        moved = []
        self._committed = True
        for name in names:
            src = self.path / name
            if src.exists():
                dst = self.out_dir / name
                if src.is_dir() and dst.is_dir():  # a package directory: swap, then drop the old one
                    old = Path(tempfile.mkdtemp(prefix=f".{name}.old-", dir=self.out_dir))
                    os.replace(dst, old / name)
                    os.replace(src, dst)
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    os.replace(src, dst)
                moved.append(dst)
        return moved


def path_size(path: Path) -> int:
    """Bytes of a file, or of every file under a directory (an .mlpackage)."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temp file and a rename."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temp file in the same directory and a rename."""
    p = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", dir=p.parent)
    except OSError as e:
        raise OutputError(f"cannot write {p} ({e.strerror or e}); choose another path") from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, p)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"cannot write {p} ({e.strerror or e}); choose another path") from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p
