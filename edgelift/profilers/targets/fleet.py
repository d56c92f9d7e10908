"""Many devices, one profile each, at most ``jobs`` at a time: every device ends as a report or an error."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ...errors import EdgeError, InvalidOptionError
from .base import DeviceTarget, OnLine, RemoteOptions, RemoteRunError, parse_target


@dataclass
class FleetResult:
    url: str
    name: str
    doc: dict | None = None
    error: str | None = None
    exc: EdgeError | None = None


def read_fleet(path: Path) -> list[tuple[str, str]]:
    """(name, url) per ``[[device]]`` of a fleet.toml (``url`` required, ``name`` optional)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        raise InvalidOptionError("--devices needs Python 3.11+ (tomllib); use --device URL instead") from None
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InvalidOptionError(f"{path}: no such fleet file") from None
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise InvalidOptionError(f"{path} is not a fleet file ({e})") from None
    devices = data.get("device")
    if not isinstance(devices, list) or not all(isinstance(d, dict) and isinstance(d.get("url"), str) for d in devices):
        raise InvalidOptionError(f"{path}: write one [[device]] table per device, each with url = \"ssh://...\"")
    return [(str(d.get("name") or d["url"]), d["url"]) for d in devices]


def profile_fleet(devices: list[tuple[str, str]], model: Path, options: RemoteOptions, jobs: int = 4,
                  on_line: OnLine | None = None) -> list[FleetResult]:
    """Profile ``model`` on every (name, url); a device that fails is reported with its error."""
    if jobs < 1:
        raise InvalidOptionError(f"--jobs must be >= 1, got {jobs}")
    targets: list[tuple[str, str, DeviceTarget | None, EdgeError | None]] = []
    for name, url in devices:
        try:
            targets.append((name, url, parse_target(url), None))
        except EdgeError as e:
            targets.append((name, url, None, e))

    def one(item) -> FleetResult:
        name, url, target, error = item
        if target is None:
            return FleetResult(url, name, error=str(error), exc=error)
        say = None if on_line is None else (on_line if len(targets) == 1 else lambda s: on_line(f"[{name}] {s}"))
        try:  # each device gets its own options: an --install changes that device's interpreter only
            doc = target.profile(model, dataclasses.replace(options), say)
            doc["device"]["name"] = name
            return FleetResult(url, name, doc=doc)
        except EdgeError as e:
            return FleetResult(url, name, error=" ".join(str(e).split()), exc=e)
        except (OSError, ValueError, KeyError, TypeError) as e:  # a device answering garbage fails alone
            err = RemoteRunError(f"{url}: unexpected answer from the device ({type(e).__name__}: {e})")
            return FleetResult(url, name, error=str(err), exc=err)

    if len(targets) == 1:  # in the main thread: Ctrl-C reaches the stream reader, which keeps partial results
        return [one(targets[0])]
    with ThreadPoolExecutor(max_workers=min(jobs, len(targets))) as pool:
        return list(pool.map(one, targets))
