"""``edge profile --device/--devices`` and ``edge devices``: the command-line side of remote profiling."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape

from ...core.units import format_bytes
from ...errors import InvalidOptionError
from .base import RemoteOptions
from .fleet import profile_fleet, read_fleet


def device_list(device: list[str], devices: Path | None) -> list[tuple[str, str]]:
    out = [(u, u) for u in device]
    if devices is not None:
        out += read_fleet(devices)
    if not out:
        raise InvalidOptionError("name a device: --device ssh://user@host, --device adb://SERIAL or --devices fleet.toml")
    return out


def _suffixed(path: Path, name: str, taken: set[Path]) -> Path:
    """``r.json`` -> ``r.<name>.json``; names that clean up alike ("pi a", "pi_a") get a counter."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    out, k = path.with_name(f"{path.stem}.{safe}{path.suffix}"), 2
    while out in taken:
        out, k = path.with_name(f"{path.stem}.{safe}-{k}{path.suffix}"), k + 1
    taken.add(out)
    return out


def _extras_for(model: Path) -> tuple[str, ...]:
    """The pip extra a device needs to run ``model`` (ONNX Runtime is in the base install)."""
    from ...core.formats import ModelFormat, detect_format

    return {ModelFormat.TFLITE: ("tflite",), ModelFormat.GGUF: ("llama",)}.get(detect_format(model), ())


def profile_on_devices(console, err_console, model: Path, device: list[str], devices: Path | None,
                       forwarded: list[str], extra: dict) -> None:
    """Profile on one device (its report, like a local run) or a fleet (per-device JSON + one comparison)."""
    from ..html import render_comparison_html
    from ..report import ProfileReport, comparison_markdown
    from ...core.atomic import atomic_write_text

    extras = _extras_for(Path(model))  # also the usual missing-file / format error, before any connection
    targets = device_list(device, devices)
    options = RemoteOptions(profile_args=forwarded, threads=extra["threads"], runs=extra["runs"],
                            warmup=extra["warmup"], n_prompt=extra["n_prompt"], n_gen=extra["n_gen"],
                            device_binary=extra["device_binary"], accept_new_host_key=extra["accept_new_host_key"],
                            install=extra["install"], power_rate_hz=extra["power_rate"], ssh_config=extra["ssh_config"],
                            remote_python=extra["remote_python"], remote_cache=extra["remote_cache"], idle_s=extra["idle"],
                            install_extras=extras, delegate=extra.get("delegate"),
                            n_gpu_layers=extra.get("n_gpu_layers"), lists=dict(extra.get("lists") or {}))
    results = profile_fleet(targets, Path(model), options, jobs=extra["jobs"],
                            on_line=lambda s: err_console.print(escape(s), highlight=False))
    failures = [(r.name, r.error) for r in results if r.error]
    docs = [r.doc for r in results if r.doc is not None]
    if extra.get("label"):
        for d in docs:
            d["model"]["label"] = extra["label"]
    if len(targets) == 1 and failures:
        raise results[0].exc
    from ...cli import print_profile

    for r in results:
        if r.doc is not None:
            console.print(f"[bold]{escape(r.name)}[/]" + (" [yellow](partial)[/]" if r.doc.get("partial") else ""))
            print_profile(r.doc)
    for name, err in failures:
        console.print(f"[bold red]failed[/] {escape(name)}: {escape(err)}", highlight=False)
    written = []
    if len(targets) == 1:
        rep = ProfileReport(docs[0])
        for path, write in ((extra["json_out"], rep.write_json), (extra["markdown"], rep.write_markdown),
                            (extra["html"], rep.write_html)):
            if path is not None:
                written.append(write(path))
    else:
        if extra["json_out"] is not None:
            taken: set[Path] = set()
            for r in results:
                if r.doc is not None:
                    written.append(ProfileReport(r.doc).write_json(_suffixed(extra["json_out"], r.name, taken)))
        if extra["markdown"] is not None:
            written.append(atomic_write_text(extra["markdown"], comparison_markdown(docs, failures)))
        if extra["html"] is not None:
            if not docs:
                raise InvalidOptionError("every device failed: no comparison to write")
            written.append(atomic_write_text(extra["html"], render_comparison_html(docs, failures=failures)))
    for w in written:
        console.print(f"wrote {escape(str(w))}", highlight=False)
    if not docs:
        raise InvalidOptionError(f"all {len(targets)} devices failed")


def list_devices(console, device: list[str], devices: Path | None, options: RemoteOptions) -> int:
    """``edge devices``: each configured device's identity, or why it cannot be reached. Returns failures."""
    from rich import box
    from rich.table import Table

    from ...errors import EdgeError
    from .base import parse_target

    table = Table(box=box.SIMPLE_HEAD, title="devices")
    for col in ("device", "status", "model", "OS", "Python", "edgelift", "backends", "free memory"):
        table.add_column(col)
    failed = 0
    for name, url in device_list(device, devices):
        try:
            target = parse_target(url)
            if hasattr(target, "configure"):
                target.configure(options)
            ident = target.identity()
        except EdgeError as e:
            failed += 1
            table.add_row(escape(name), f"[red]unreachable[/]: {escape(' '.join(str(e).split()))}", *("",) * 6)
            continue
        free = ident.get("memory_free_bytes")
        table.add_row(escape(name), "[green]ok[/]", escape(str(ident.get("model"))), escape(str(ident.get("os"))),
                      escape(str(ident.get("python"))), escape(str(ident.get("edgelift") or "not installed")),
                      escape(", ".join(f"{k} {v}" for k, v in (ident.get("backends") or {}).items() if k != "numpy")),
                      "n/a" if free is None else format_bytes(free))
    console.print(table)
    return failed
