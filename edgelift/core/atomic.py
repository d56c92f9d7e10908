"""Publish a run's outputs all at once or not at all: after a kill -9 at any moment, a full disk or a
read-only file system, ``--out`` holds either what it held before or the complete new set.

Every file of one conversion (artifacts and ``conversion.json``) is written into a staging directory
beside ``--out`` (same file system), fsynced, and published in one atomic step:

- ``--out`` does not exist yet: the staging directory is renamed to it;
- ``--out`` exists: the staging directory first receives hard links to every entry of ``--out`` that
  this run does not replace, then the two directories trade places in one ``renameat2(RENAME_EXCHANGE)``
  (``renamex_np(RENAME_SWAP)`` on macOS) and the old one is emptied and removed.

Where that swap is impossible (another OS, ``--out`` holding the working directory or a mount point,
a file system without hard links, more than ``MAX_MIRRORED_ENTRIES`` entries to link) the files move
one by one after a journal naming them is fsynced; a run killed during those moves is finished by the
next run into the same folder (roll forward), so the folder still ends complete.

A staging directory is locked (``flock``) by the process that owns it; one whose lock is free belongs
to a killed run and is removed (or rolled forward) by the next run into that folder.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from types import TracebackType

from ..errors import OutputError

try:
    import fcntl
except ImportError:  # Windows: no flock; stale staging folders are then left for the user
    fcntl = None  # type: ignore[assignment]

STAGING_TAG = ".edge-staging-"
JOURNAL_NAME = ".edge-publish.json"
MAX_MIRRORED_ENTRIES = 10_000  # beyond this --out is a general-purpose folder: publish file by file
CRASH_ENV = "EDGELIFT_CRASH_AT"  # tests: SIGKILL this process at a named publishing step


def _crash_point(name: str) -> None:
    """Fault injection for the kill tests: ``EDGELIFT_CRASH_AT=<name>`` kills the process right here."""
    if os.environ.get(CRASH_ENV) == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def _why(e: OSError) -> str:
    return e.strerror or str(e)


_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EIO, errno.EACCES, errno.EPERM,
                 errno.ENAMETOOLONG}


@contextlib.contextmanager
def output_errors(out_dir: Path):
    """Turn a failed write inside the block (full disk, quota, read-only file system) into one OutputError,
    including the exporters' own wrappers of it (onnx, coremltools and gguf write with Python or C++ I/O)."""
    try:
        yield
    except OSError as e:
        if e.errno not in _WRITE_ERRNOS:
            raise
        raise OutputError(f"cannot write to {out_dir} ({_why(e)}); free space or choose another --out") from e
    except (RuntimeError, ValueError) as e:
        text = str(e)
        for code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            if os.strerror(code) in text:
                raise OutputError(f"cannot write to {out_dir} ({os.strerror(code)}); free space or choose another "
                                  "--out") from e
        raise


def ensure_writable_dir(out_dir: str | Path) -> Path:
    """Prove ``out_dir`` can be written (or created) before any long work starts; create nothing."""
    d = Path(out_dir)
    if d.is_symlink() and not d.exists():
        raise OutputError(f"output directory {d} is a symbolic link to nothing ({os.readlink(d)}); "
                          "remove it or choose another --out")
    if d.exists() and not d.is_dir():
        raise OutputError(f"output path {d} is a file, not a directory; choose another --out")
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
        raise OutputError(f"cannot write to output directory {d} ({_why(e)}); choose another --out") from e
    return d


def fsync_tree(root: Path) -> None:
    """Flush every file and directory under ``root`` (and ``root`` itself) to storage."""
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            if os.path.islink(p):
                continue
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on directories; the data files are flushed
        pass
    finally:
        os.close(fd)


def _lock(path: Path) -> int | None:
    """An exclusive flock on directory ``path`` (fd returned), or None when another live process holds it."""
    if fcntl is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directory entries atomically; False where the OS or file system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if sys.platform.startswith("linux") and hasattr(libc, "renameat2"):
            at_fdcwd, rename_exchange = -100, 2
            ok = libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0
        elif sys.platform == "darwin" and hasattr(libc, "renamex_np"):
            ok = libc.renamex_np(os.fsencode(a), os.fsencode(b), 0x2) == 0  # RENAME_SWAP
        else:
            return False
    except (OSError, AttributeError):
        return False
    return ok


def _move(src: Path, dst: Path) -> None:
    """Replace ``dst`` by ``src``; a directory (an .mlpackage) by a swap, then the old one goes."""
    if src.is_dir() and not src.is_symlink() and dst.is_dir() and not dst.is_symlink():
        if not _exchange(src, dst):
            aside = dst.with_name(f".{dst.name}.old-{os.getpid()}")
            os.replace(dst, aside)
            os.replace(src, dst)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            shutil.rmtree(src, ignore_errors=True)
    else:
        if dst.is_dir() and not dst.is_symlink():
            shutil.rmtree(dst)
        os.replace(src, dst)


def _roll_forward(staging: Path, out_dir: Path) -> None:
    """Finish the file-by-file publication a killed run journaled (every name still in staging moves)."""
    try:
        names = json.loads((staging / JOURNAL_NAME).read_text())["names"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    for name in names:
        if isinstance(name, str) and "/" not in name and name not in ("", ".", "..") and (staging / name).exists():
            _move(staging / name, out_dir / name)
    fsync_dir(out_dir)


def sweep_stale(out_dir: Path) -> None:
    """Remove staging directories of killed runs into ``out_dir`` (rolling a journaled one forward)."""
    places = [(out_dir.parent, f".{out_dir.name}{STAGING_TAG}"), (out_dir, STAGING_TAG)]
    for where, prefix in places:
        try:
            entries = list(where.iterdir()) if where.is_dir() else []
        except OSError:
            continue
        for entry in entries:
            if not entry.name.startswith(prefix) or entry.is_symlink() or not entry.is_dir():
                continue
            fd = _lock(entry)
            if fd is None:
                continue  # a live run owns it
            try:
                if (entry / JOURNAL_NAME).is_file() and out_dir.is_dir():
                    _roll_forward(entry, out_dir)
                shutil.rmtree(entry, ignore_errors=True)
            finally:
                os.close(fd)


class StagingDir:
    """Where one run writes its outputs before they are published to ``out_dir`` together.

    ``file(name)`` is where to write ``name``; ``commit(*names)`` adds finished names to the set;
    ``publish()`` makes the set appear in ``out_dir`` at once. Leaving the ``with`` block without
    publishing (an error, Ctrl-C) removes everything staged and any folder it created.
    """

    def __init__(self, out_dir: str | Path) -> None:
        out = Path(out_dir)
        ensure_writable_dir(out)
        self.out_dir = Path(os.path.realpath(out)) if out.is_symlink() else out  # a link to a folder: publish there
        self._out = Path(os.path.abspath(self.out_dir))  # "." has no parent to stage in; its absolute form has
        self._created = [p for p in self._out.parents if not p.exists()]  # parents we create, deepest first
        self._names: list[str] = []
        self._published = False
        try:
            self._out.parent.mkdir(parents=True, exist_ok=True)
            sweep_stale(self._out)
            self.path = Path(tempfile.mkdtemp(prefix=f".{self._out.name}{STAGING_TAG}", dir=self._out.parent))
        except OSError:
            # the parent is not writable (a mount point's parent): stage inside out_dir, publish file by file
            try:
                self._out.mkdir(exist_ok=True)
                self.path = Path(tempfile.mkdtemp(prefix=STAGING_TAG, dir=self._out))
            except OSError as e:
                self._remove_created()
                raise OutputError(f"cannot write to output directory {out} ({_why(e)}); choose another --out") from e
        self._lock_fd = _lock(self.path)

    def __enter__(self) -> "StagingDir":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.path.exists():
            shutil.rmtree(self.path, ignore_errors=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if not self._published:
            self._remove_created()

    def _remove_created(self) -> None:
        for d in self._created:
            try:
                d.rmdir()
            except OSError:
                break

    def file(self, name: str) -> Path:
        return self.path / name

    def write_text(self, name: str, text: str) -> Path:
        try:
            self.file(name).write_text(text, encoding="utf-8")
        except OSError as e:
            raise OutputError(f"cannot write {self.out_dir / name} ({_why(e)}); free space or choose another --out") from e
        self.commit(name)
        return self.out_dir / name

    def commit(self, *names: str) -> list[Path]:
        """Add finished files (or package directories) to what ``publish`` moves; returns their final paths."""
        for name in names:
            if name not in self._names and (self.path / name).exists():
                self._names.append(name)
        return [self.out_dir / n for n in names]

    def discard(self, *names: str) -> None:
        """Drop staged files (or package directories): an artifact that failed its checks is not published."""
        for name in names:
            target = self.path / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target, ignore_errors=True)
            elif target.exists() or target.is_symlink():
                target.unlink()
            if name in self._names:
                self._names.remove(name)

    def publish(self) -> list[Path]:
        """Flush the staged set to storage and make it appear in ``out_dir`` in one step."""
        try:
            fsync_tree(self.path)
            _crash_point("publish:staged")
            inside = self.path.parent == self._out
            if not inside and not self._out.exists():
                self._publish_by_rename()
            elif inside or not self._publish_by_exchange():
                self._publish_file_by_file()
        except OSError as e:
            raise OutputError(f"cannot publish to {self.out_dir} ({_why(e)}); free space or choose another --out") from e
        self._published = True
        return [self.out_dir / n for n in self._names]

    def _strip_to_names(self) -> None:
        keep = set(self._names)
        for entry in self.path.iterdir():
            if entry.name not in keep:
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()

    def _publish_by_rename(self) -> None:
        self._strip_to_names()
        os.chmod(self.path, 0o777 & ~_umask())
        _crash_point("publish:before-rename")
        os.rename(self.path, self._out)  # fails if out_dir appeared meanwhile: nothing lost
        fsync_dir(self._out.parent)

    def _publish_by_exchange(self) -> bool:
        """Mirror --out's other entries into staging by hard links, then swap the two folders."""
        if self._holds_cwd_or_mount():
            return False
        self._strip_to_names()
        try:
            linked = _mirror(self._out, self.path, set(self._names))
        except _CannotMirror:
            self._strip_to_names()
            return False
        st = self._out.stat()
        os.chmod(self.path, stat.S_IMODE(st.st_mode))
        try:
            os.chown(self.path, st.st_uid, st.st_gid)
        except OSError:
            pass
        fsync_dir(self.path)
        _crash_point("publish:before-exchange")
        if not _exchange(self.path, self._out):
            self._strip_to_names()
            return False
        fsync_dir(self._out.parent)
        _crash_point("publish:after-exchange")
        old = self.path  # now the previous --out
        for entry in list(old.iterdir()):  # anything created in --out while we linked: keep it
            if entry.name not in linked and entry.name not in self._names:
                os.replace(entry, self._out / entry.name)
        shutil.rmtree(old, ignore_errors=True)
        return True

    def _holds_cwd_or_mount(self) -> bool:
        try:
            cwd = Path(os.getcwd()).resolve()
        except OSError:
            return True
        out = self._out.resolve()
        return cwd == out or out in cwd.parents or os.path.ismount(out)

    def _publish_file_by_file(self) -> None:
        journal = self.path / JOURNAL_NAME
        journal.write_text(json.dumps({"names": self._names}))
        fd = os.open(journal, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(self.path)
        self._out.mkdir(exist_ok=True)
        for name in self._names:
            _move(self.path / name, self._out / name)
            _crash_point("publish:moved-one")
        fsync_dir(self._out)


class _CannotMirror(Exception):
    pass


def _mirror(src: Path, dst: Path, skip: set[str]) -> set[str]:
    """Hard-link every entry of ``src`` (recursively) into ``dst`` except the top-level names in ``skip``."""
    count = 0
    top: set[str] = set()

    def walk(s: Path, d: Path, depth: int) -> None:
        nonlocal count
        for entry in os.scandir(s):
            if depth == 0 and (entry.name in skip or STAGING_TAG in entry.name):
                continue
            count += 1
            if count > MAX_MIRRORED_ENTRIES:
                raise _CannotMirror
            target = d / entry.name
            try:
                if entry.is_symlink():
                    os.symlink(os.readlink(entry.path), target)
                elif entry.is_dir():
                    target.mkdir()
                    walk(Path(entry.path), target, depth + 1)
                    os.chmod(target, stat.S_IMODE(entry.stat().st_mode))
                elif entry.is_file():
                    os.link(entry.path, target)
                else:
                    raise _CannotMirror  # sockets, fifos, devices: do not touch
            except OSError as e:  # another file system below, no hard links here
                raise _CannotMirror from e
            if depth == 0:
                top.add(entry.name)

    try:
        walk(src, dst, 0)
    except OSError as e:
        raise _CannotMirror from e
    return top


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
    """Write ``data`` to ``path`` through a flushed temp file in the same directory and a rename."""
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"cannot write {p}: it is a directory; give a file name")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name[:200]}.", dir=p.parent)
    except OSError as e:
        raise OutputError(f"cannot write {p} ({_why(e)}); choose another path") from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, p)
        fsync_dir(p.parent)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"cannot write {p} ({_why(e)}); free space or choose another path") from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p
