"""The ``edge`` command line. Library code raises; only this module prints and exits."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import __version__
from .core.units import format_bytes as _human_bytes  # the one size convention (decimal units)
from .errors import EdgeError

_PLACEHOLDERS = {"str": "TEXT", "Path": "PATH", "int": "INTEGER", "float": "FLOAT"}


def _flag_metavar_blank() -> None:
    """Help screens show a value placeholder per option; typer prints Python annotations (``<bool>`` for
    on/off flags, which take no value, ``<list[str]>`` for repeatable ones). Show what click and argparse
    show instead: nothing for a flag, the value's kind (TEXT, PATH, INTEGER) otherwise."""
    import typer.core

    opt = getattr(typer.core, "TyperOption", None)
    original = getattr(opt, "display_type_rich", None)
    if original is None or getattr(original, "_edgelift", False):
        return

    def display_type_rich(self, ctx):
        if self.metavar is not None:
            return self.metavar
        if getattr(self, "is_flag", False):
            return ""
        try:  # click's own placeholders: TEXT, PATH, INTEGER, FLOAT
            bare = self.bare_type().removeprefix("list[").removesuffix("]")
        except Exception:  # another typer: its own rendering
            return original(self, ctx)
        return _PLACEHOLDERS.get(bare, bare.upper())

    display_type_rich._edgelift = True
    opt.display_type_rich = display_type_rich
    arg = getattr(typer.core, "TyperArgument", None)
    if arg is not None and hasattr(arg, "display_type_rich"):
        arg.display_type_rich = lambda self, ctx: ""  # an argument's name (MODEL, SOURCE) already says what it is


_flag_metavar_blank()
app = typer.Typer(
    name="edge",
    help="Convert, run and profile models for phones, single-board computers and Jetson.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Tables are wide; when output is piped (CI logs, files) don't squeeze them into 80 columns.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)


def _fail(e: EdgeError) -> None:
    message = " ".join(str(e).split())  # always one line
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=e.exit_code)


def _version(value: bool) -> None:
    if value:
        console.print(f"edgelift {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """edgelift command line."""


@app.command()
def convert(
    source: str = typer.Argument(..., metavar="SOURCE", help="model.pt2, model.onnx, module.path:factory (with --weights), "
                                 "or a Hugging Face checkpoint directory (decoder language models to onnx or gguf; encoders to onnx), a model id in the local Hugging "
                                 "Face cache (ORG/NAME, never downloaded) or model.gguf."),
    to: list[str] = typer.Option(["onnx"], "--to", rich_help_panel="Targets", help="Target formats (comma list or repeatable): onnx, tflite, coreml; or gguf (alone) from a Hugging Face checkpoint or a .gguf."),
    quantize: list[str] = typer.Option(
        ["none"], "--quantize", "-q",
        rich_help_panel="Targets", help="Modes (comma list, e.g. int8,int4, or repeatable): none|fp32, fp16, int8, int8-dynamic, int4; Core ML also palettize4, palettize6; "
             "GGUF: F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q4_K Q5_K Q6_K Q4_K_S Q4_K_M Q5_K_S Q5_K_M.",
    ),
    out: Path = typer.Option(Path("edge-out"), "--out", "-o", rich_help_panel="Targets", help="Output directory."),
    calibration: Optional[str] = typer.Option(
        None, "--calibration", rich_help_panel="Data and shapes", help="FILE.npz (arrays keyed by input name, axis 0 = samples) or 'random'."),
    validation: Optional[str] = typer.Option(
        None, "--validation", rich_help_panel="Data and shapes", help="FILE.npz for parity (optional 'labels' key for accuracy)."),
    weights: Optional[Path] = typer.Option(None, "--weights", rich_help_panel="Data and shapes", help="FILE.safetensors for a factory source."),
    input_shape: list[str] = typer.Option([], "--input-shape", rich_help_panel="Data and shapes", help="NAME=1x3x640x640 (repeatable): sizes for the model's symbolic dims; ? keeps a dim dynamic (ONNX; TFLite where the graph allows it), NAME= for a scalar."),
    batch_axis: list[str] = typer.Option([], "--batch-axis", rich_help_panel="Data and shapes", help="NAME=- : the input has no batch axis (a state or scalar fed whole); NAME=0 : axis 0 is its batch."),
    input_range: list[str] = typer.Option([], "--input-range", rich_help_panel="Data and shapes", help="NAME=LO..HI : values random data draws for an input (e.g. sr=16000..16000, ids=0..30521)."),
    min_cosine: Optional[float] = typer.Option(None, "--min-cosine", rich_help_panel="Parity gate", help="Parity gate: minimum cosine of the primary output (default per mode: fp32 0.9999, fp16 0.999, int8 0.99, int4 0.98)."),
    max_rel_l2: Optional[float] = typer.Option(None, "--max-rel-l2", rich_help_panel="Parity gate", help="Parity gate: maximum relative L2 error of the primary output."),
    keep_failed: bool = typer.Option(False, "--keep-failed", rich_help_panel="Parity gate", help="Write artifacts that fail their parity gate too (marked failed in conversion.json); the exit code is still 3."),
    no_repair: bool = typer.Option(False, "--no-repair", rich_help_panel="Parity gate", help="Do not try mixed precision (nodes kept in float) on artifacts below their gate."),
    name: Optional[str] = typer.Option(None, "--name", rich_help_panel="Targets", help="Artifact base name (default: from the source)."),
    block_size: int = typer.Option(32, "--block-size", rich_help_panel="Quantization", help="int4 block size: 32, 64 or 128."),
    asymmetric: bool = typer.Option(False, "--asymmetric", rich_help_panel="Quantization", help="int4 with zero points (default symmetric)."),
    attention: str = typer.Option("auto", "--attention", rich_help_panel="Export and formats", help="Language models to ONNX: contrib (ONNX Runtime's GroupQueryAttention, fastest), standard (standard ONNX operators only, for other runtimes and execution providers), auto."),
    accuracy_level: Optional[int] = typer.Option(None, "--accuracy-level", metavar="0-4", rich_help_panel="Quantization", help="Language models to ONNX: MatMulNBits' compute type, 0 (fp32) to 4 (int8 activations, fastest on CPUs). Default: 4, and 0 where int8 compute misses the parity gate on this CPU."),
    activation_type: str = typer.Option("uint8", "--activation-type", rich_help_panel="Quantization", help="int8 activations: uint8 or int8."),
    calibration_method: str = typer.Option("minmax", "--calibration-method", rich_help_panel="Quantization", help="minmax, entropy, percentile."),
    static_batch: bool = typer.Option(False, "--static-batch", rich_help_panel="Export and formats", help="Keep the example's batch size fixed."),
    opset: Optional[int] = typer.Option(None, "--opset", rich_help_panel="Export and formats", help="ONNX opset (default: the exporter's)."),
    nhwc_io: bool = typer.Option(False, "--nhwc-io", rich_help_panel="Export and formats", help="TFLite: NHWC model inputs/outputs (no input TRANSPOSE)."),
    int8_io: bool = typer.Option(False, "--int8-io", rich_help_panel="Export and formats", help="TFLite int8: int8 inputs/outputs (no QUANTIZE/DEQUANTIZE at the ends)."),
    coreml_target: str = typer.Option("iOS16", "--coreml-target", rich_help_panel="Export and formats", help="Core ML minimum deployment target: iOS16, iOS17, iOS18 (int4 needs iOS18)."),
    coreml_precision: str = typer.Option("fp16", "--coreml-precision", rich_help_panel="Export and formats", help="Core ML compute precision of the compressed modes: fp16 or fp32."),
    exporter: str = typer.Option("auto", "--exporter", rich_help_panel="Export and formats", help="torch -> ONNX: auto (dynamo for a dynamic batch, else the TorchScript tracer with dynamo as fallback), dynamo, torchscript."),
) -> None:
    """Convert a model to deployable artifacts, with a parity report for each."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from .converters.api import convert as do_convert
    from .converters.signature import parse_batch_axis, parse_input_range, parse_input_shape
    from .errors import ParityError

    try:
        shapes = dict(parse_input_shape(s) for s in input_shape) or None
        axes = dict(parse_batch_axis(s) for s in batch_axis) or None
        ranges = dict(parse_input_range(s) for s in input_range) or None
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                      TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                      console=err_console, transient=True, disable=not err_console.is_terminal) as bar:
            task = bar.add_task("starting", total=None)

            def on_progress(ev) -> None:
                bar.update(task, total=ev.total, completed=ev.step - 1, description=ev.description)

            result = do_convert(
                source, to=to, quantize=quantize, out=out, calibration=calibration,
                validation=validation, weights=weights, input_shapes=shapes, batch_axis=axes, input_ranges=ranges,
                min_cosine=min_cosine, max_rel_l2=max_rel_l2, keep_failed=keep_failed, repair=not no_repair, name=name,
                block_size=block_size, symmetric=not asymmetric, accuracy_level=accuracy_level, attention=attention,
                activation_type=activation_type, calibration_method=calibration_method, dynamic_batch=not static_batch, opset=opset, nhwc_io=nhwc_io, int8_io=int8_io,
                coreml_target=coreml_target, coreml_precision=coreml_precision,
                exporter=exporter,
                progress=on_progress,
            )
    except ParityError as e:
        if e.result is not None:
            print_conversion(e.result)
        _fail(e)
    except EdgeError as e:
        _fail(e)
    print_conversion(result)


def print_conversion(result) -> None:
    src = result.source
    first = result.artifacts[0].parity
    title = (f"{src.name}: parity vs {first.reference} on {first.samples} samples "
             f"({'random' if first.synthetic_inputs else first.inputs})")
    table = Table(box=box.SIMPLE_HEAD, title=escape(title))
    language_model = any(a.parity.primary.kl_divergence is not None for a in result.artifacts)
    last = ("KL div", "bits/weight") if language_model else ("accuracy",)
    for col in ("artifact", "gate", "size", "params", "max abs err", "rel L2", "cosine", "top-1 agree", *last, "time s"):
        table.add_column(col, justify="left" if col == "artifact" else "right", no_wrap=True)
    for a in result.artifacts:
        p = a.parity.primary
        extra = ((f"{p.kl_divergence:.2e}" if p.kl_divergence is not None else "-",
                  f"{a.quantization.details.get('bits_per_weight', 0):.2f}") if language_model
                 else ("-" if a.parity.accuracy is None else f"{100 * a.parity.accuracy:.2f}%",))
        label = Path(a.path).name if a.path else f"({a.format} {a.mode}: not written)"
        verdict = "[green]pass[/]" if a.status == "passed" else "[bold red]FAIL[/]"
        table.add_row(
            escape(label), verdict, _human_bytes(a.size_bytes), f"{a.parameters:,}",
            f"{p.max_abs_error:.2e}", f"{p.rel_l2_error:.2e}", f"{p.cosine_similarity:.6f}",
            "-" if p.top1_agreement is None else f"{100 * p.top1_agreement:.2f}%",
            *extra, f"{a.conversion_time_s:.2f}",
        )
    console.print(table)
    if first.reference_accuracy is not None:
        console.print(f"reference ({first.reference}) accuracy: {100 * first.reference_accuracy:.2f}%")
    for a in result.artifacts:
        for w in a.warnings:
            console.print(f"[yellow]warning[/] {escape(Path(a.path).name or a.format + ' ' + a.mode)}: {escape(w)}",
                          highlight=False)
    for note in src.notes:
        console.print(f"note: {escape(note)}", highlight=False)
    console.print(f"report: {escape(str(result.report_path))}", highlight=False)


@app.command()
def inspect(model: Path = typer.Argument(..., metavar="MODEL", help="An .onnx, .tflite, .gguf, .pt2 or .mlpackage model.")) -> None:
    """Show a model's format, signature, op histogram, parameters and weight storage."""
    from .converters.inspect import inspect as do_inspect

    try:
        r = do_inspect(model)
    except EdgeError as e:
        _fail(e)
    console.print(f"[bold]{escape(r.path)}[/]  format={r.format}  size={_human_bytes(r.size_bytes)} "
                  f"({r.size_bytes:,} B)  parameters={r.parameters:,}", highlight=False)
    for k, v in r.metadata.items():
        console.print(f"  {k}: {escape(v)}", highlight=False)
    sig = Table(title="signature")
    for col in ("", "name", "shape", "dtype"):
        sig.add_column(col, overflow="fold")  # full names (paddle's 'save_infer_model/scale_0.tmp_1'), wrapped
    for kind, specs in (("input", r.inputs), ("output", r.outputs)):
        for s in specs:
            dims = "[" + ", ".join("?" if d is None else str(d) for d in s.shape) + "]"
            sig.add_row(kind, escape(s.name), escape(dims), s.dtype)
    console.print(sig)
    w = Table(title="weights by storage dtype")
    for col in ("dtype", "tensors", "elements", "bytes"):
        w.add_column(col, justify="right")
    for dt, st in r.weight_dtypes.items():
        w.add_row(dt, str(st.tensors), f"{st.elements:,}", _human_bytes(st.bytes))
    console.print(w)
    quant = "; ".join(r.quantization) if r.quantization else "none (float weights)"
    console.print("quantization: " + escape(quant), highlight=False)
    ops = Table(title="operators")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op, n in r.op_histogram.items():
        ops.add_row(escape(op), str(n))
    console.print(ops)


@app.command()
def run(
    model: Path = typer.Argument(..., metavar="MODEL", help="A model file: .onnx, .tflite, .gguf, .mlpackage.", show_default=False),
    input: Optional[Path] = typer.Option(None, "--input", "-i", metavar="FILE.npz", rich_help_panel="Inputs",
                                         help="One array per model input, keyed by its name."),
    random: bool = typer.Option(False, "--random", rich_help_panel="Inputs", help="Synthesize inputs from the signature (seeded)."),
    seed: int = typer.Option(0, "--seed", metavar="N", rich_help_panel="Inputs", help="Seed for --random."),
    batch: Optional[int] = typer.Option(None, "--batch", "-b", metavar="N", rich_help_panel="Inputs",
                                        help="Batch size for --random where the batch axis is dynamic (default 1)."),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", metavar="TEXT", rich_help_panel="Language models (llama-cli's flags)",
                                         help="Text to complete (GGUF models; llama-cli -p)."),
    max_tokens: int = typer.Option(32, "--max-tokens", "-n", metavar="N", rich_help_panel="Language models (llama-cli's flags)",
                                   help="Tokens to generate with --prompt (llama-cli -n)."),
    n_ctx: Optional[int] = typer.Option(None, "--n-ctx", "-c", metavar="N", rich_help_panel="Language models (llama-cli's flags)",
                                        help="Context length for GGUF models (default 512)."),
    n_gpu_layers: Optional[int] = typer.Option(None, "-ngl", "--n-gpu-layers", metavar="N",
                                               rich_help_panel="Language models (llama-cli's flags)",
                                               help="llama.cpp: layers offloaded to the GPU."),
    backend: str = typer.Option("auto", "--backend", metavar="NAME", rich_help_panel="Backend",
                                help="auto, onnxruntime, litert, tflite-runtime, coreml, llama.cpp, edge."),
    ep: list[str] = typer.Option([], "--ep", "--providers", metavar="EP[,EP..]", rich_help_panel="Backend",
                                 help="ONNX Runtime execution providers in order: cpu, cuda, tensorrt, coreml, openvino, qnn."),
    ep_option: list[str] = typer.Option([], "--ep-option", metavar="EP:KEY=VALUE", rich_help_panel="Backend",
                                        help="A provider option, e.g. tensorrt:trt_fp16_enable=True (repeatable)."),
    delegate: Optional[str] = typer.Option(None, "--delegate", metavar="NAME", rich_help_panel="Backend",
                                           help="LiteRT: xnnpack (default), none, gpu, nnapi, or a delegate library .so."),
    threads: Optional[int] = typer.Option(None, "--threads", "-t", metavar="N", rich_help_panel="Backend", help="Intra-op threads."),
    memory_budget: Optional[str] = typer.Option(
        None, "--memory-budget", metavar="SIZE", rich_help_panel="Backend",
        help="256KB, 1.5MB, 2MiB: ONNX CNNs run patch by patch to fit their activations; GGUF models (--backend edge) "
             "stream weights from storage to fit."),
    devices: Optional[str] = typer.Option(
        None, "--rpc", "--devices", metavar="FLEET.toml|HOST:PORT[=MEM],..", rich_help_panel="Language models (llama-cli's flags)",
        help="GGUF across llama.cpp RPC servers (edge serve-rpc on each device; llama-cli --rpc): layers split by each "
             "device's memory."),
    save: Optional[Path] = typer.Option(None, "--save", metavar="OUT.npz", help="Write the outputs to OUT.npz."),
) -> None:
    """Run a model once and summarize its outputs (or complete a prompt with a GGUF model)."""
    import io

    import numpy as np

    from .core.atomic import atomic_write_bytes
    from .core.formats import ModelFormat, detect_format
    from .core.hub_cache import resolve_model_path
    from .core.tensors import random_input_set, read_npz, unbatched_inputs, validate_inputs
    from .errors import InvalidOptionError
    from .runtimes.model import load

    try:
        model = resolve_model_path(model)  # a Hugging Face id (ORG/NAME[:PICK]): its file in the local cache
        if sum(x is not None and x is not False for x in (input, random or None, prompt)) != 1:
            raise InvalidOptionError("give exactly one of --input FILE.npz, --random or --prompt TEXT")
        if (batch is not None and batch < 1) or max_tokens < 1:
            raise InvalidOptionError(f"--batch and --max-tokens must be >= 1, got {batch} and {max_tokens}")
        if batch is not None and not random:
            raise InvalidOptionError("--batch sets the size of --random inputs; with --input the file's arrays are the batch")
        if input is not None and input.is_dir():
            raise InvalidOptionError(f"--input {input} is a directory: give an .npz file with one array per model input "
                                     "(numpy.savez('in.npz', x=array))")
        options = {} if n_ctx is None else {"n_ctx": n_ctx}
        options.update(backend_options(ep, ep_option, delegate, n_gpu_layers))
        if devices is not None:
            if detect_format(model) is not ModelFormat.GGUF or backend not in ("auto", "llama.cpp"):
                raise InvalidOptionError("--rpc/--devices splits a GGUF model across llama.cpp RPC servers: give a "
                                         ".gguf model (backend llama.cpp)")
            options["devices"] = devices
            backend = "llama.cpp"
        if prompt is not None:
            from .runtimes.onnx_llm import is_language_model_file

            if not is_language_model_file(model):
                raise InvalidOptionError(f"--prompt needs a language model (GGUF, or ONNX with a key-value cache); "
                                         f"{model.name} is not one")
            if detect_format(model) is ModelFormat.GGUF:
                options["logits_all"] = False  # generation needs the last position's logits only
        if memory_budget is not None:
            options["memory_budget"] = memory_budget
            if detect_format(model) is ModelFormat.ONNX:
                from .runtimes.budget import is_planned, parse_budget

                if not is_planned(model, parse_budget(memory_budget)):
                    console.print(f"planning patch-based inference for {escape(memory_budget)} (once per model and "
                                  "budget; the plan is measured and cached) ...", highlight=False)
        m = load(model, backend=backend, threads=threads, **options)
        if m.memory_plan is not None:
            console.print(f"patch-based: {escape(m.memory_plan.describe())}", highlight=False)
        with m:
            if prompt is not None:
                pieces = m.generate(prompt, max_tokens=max_tokens, stream=True)
                console.print(escape(prompt), end="", highlight=False)
                for piece in pieces:
                    console.print(escape(piece), end="", highlight=False)
                console.print()
                st = getattr(m.session, "last_stats", None)
                if st is not None:
                    console.file.flush()  # the completion's newline before the stats on stderr
                    streamed = getattr(m.session, "store", None) is not None  # the edge engine's weight store
                    err_console.print(
                        f"TTFT {st.ttft_s * 1e3:.0f} ms, prefill {st.prefill_tokens_per_s:.1f} tok/s, decode "
                        f"{st.decode_tokens_per_s:.1f} tok/s; " + (
                            f"read {st.bytes_read / 1e6:.1f} MB from storage, peak resident weights "
                            f"{st.peak_resident_weight_bytes / 1e6:.1f} MB; I/O wait {st.io_wait_s:.2f} s, "
                            if streamed else "") + f"compute {st.compute_s:.2f} s", highlight=False)
                return
            # inputs without a batch axis (a recurrent state, a scalar) are fed whole, the others batched
            unbatched = unbatched_inputs(m.inputs)
            if input is not None:
                arrays, _ = read_npz(input)
                arrays, _ = validate_inputs(arrays, None, m.inputs, str(input), unbatched)
            else:  # the model's fixed batch size, else --batch
                batched = [s for s in m.inputs if s.name not in unbatched and s.shape]
                first = batched[0].shape[0] if batched else None
                if isinstance(first, int) and batch is not None and batch != first:
                    raise InvalidOptionError(f"--batch {batch}: {model.name} has a fixed batch of {first} "
                                             f"(input '{batched[0].name}' is {list(batched[0].shape)}); drop --batch "
                                             "or re-export the model with a dynamic batch axis")
                n = first if isinstance(first, int) else (batch or 1)
                arrays = random_input_set(m.inputs, n, seed=seed, unbatched=unbatched,
                                          example_shapes=getattr(m.session, "built_shapes", None)).arrays
            feeds = {k: (v[0] if k in unbatched else v) for k, v in arrays.items()}
            outputs = m.run(feeds)
        if save is not None:
            buf = io.BytesIO()
            np.savez(buf, **outputs)
            atomic_write_bytes(save, buf.getvalue())
    except EdgeError as e:
        _fail(e)
    table = Table(box=box.SIMPLE_HEAD, title=escape(f"{model.name} on {m.backend}"))
    for col in ("output", "shape", "dtype", "min", "max", "mean", "argmax[0]"):
        table.add_column(col, justify="left" if col == "output" else "right", no_wrap=True)
    for name, v in outputs.items():
        numeric = v.size and np.issubdtype(v.dtype, np.number)
        arg = str(int(np.argmax(v[0]))) if numeric and v.ndim == 2 else "-"
        stats = (f"{v.min():.4g}", f"{v.max():.4g}", f"{v.astype(np.float64).mean():.4g}") if numeric else ("-",) * 3
        table.add_row(escape(name), str(list(v.shape)), str(v.dtype), *stats, arg)
    console.print(table)
    if save is not None:
        console.print(f"saved: {escape(str(save))}", highlight=False)


@app.command()
def plan(
    model: Path = typer.Argument(..., metavar="MODEL", help="An ONNX model (static spatial shapes)."),
    memory_budget: Optional[str] = typer.Option(
        None, "--memory-budget", help="Find the patch plan with the least extra compute that fits (256KB, 1.5MB, 2MiB)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write the per-op memory profile as PLOT.svg or PLOT.png."),
    top: int = typer.Option(0, "--rows", help="Show only the N ops using the most memory (0: all)."),
    save_model: Optional[Path] = typer.Option(
        None, "--save-model", help="Write the patched schedule as one ONNX model (runs in any ONNX Runtime)."),
) -> None:
    """Activation memory op by op (peak marked), and the patch-based plan that fits a budget."""
    from .runtimes.memory import human_bytes, load_graph, parse_budget, plan_memory
    from .runtimes.patch import StagePlanner
    from .errors import InvalidOptionError
    from .profilers.plots import memory_profile_plot

    try:
        budget = parse_budget(memory_budget) if memory_budget is not None else None
        graph, _ = load_graph(model)
        mp = plan_memory(graph)
        planner, patches = StagePlanner(graph, mp), None
        if budget is not None and mp.peak_bytes > budget or budget is None:
            try:
                patches = planner.search(budget)
            except InvalidOptionError as e:
                if budget is not None:
                    raise
                console.print(f"[yellow]no patch plan:[/] {escape(str(e))}", highlight=False)
        if plot is not None:
            memory_profile_plot(mp, plot, budget=budget, patched_peak=None if patches is None else patches.peak)
        if save_model is not None:
            if patches is None:
                raise InvalidOptionError("no patch plan to save: the plain schedule fits the budget")
            from .core.atomic import atomic_write_bytes
            from .runtimes.patch_run import PLAN_FORMAT, patched_model

            meta = {"format": PLAN_FORMAT, "budget_bytes": budget or patches.peak, "plain_fits": False,
                    **patches.summary()}
            atomic_write_bytes(save_model, patched_model(graph, planner, patches, meta))
    except EdgeError as e:
        _fail(e)
    peak = mp.peak_op
    table = Table(box=box.SIMPLE_HEAD, title=escape(f"{model.name}: activation memory per op "
                                                    f"({'int8' if mp.quantized else 'float'} activations)"))
    for col in ("#", "op", "output shape", "in use", ""):
        table.add_column(col, justify="right" if col in ("#", "in use") else "left", no_wrap=True)
    rows = sorted(mp.ops, key=lambda o: -o.live_bytes)[:top] if top else mp.ops
    for op in sorted(rows, key=lambda o: o.index):
        bar = "#" * max(1, round(30 * op.live_bytes / mp.peak_bytes))
        mark = " [bold red]<- peak[/]" if op is peak else ""
        table.add_row(str(op.index), escape(op.op_type), str(list(mp.shapes.get(op.output, ()))),
                      human_bytes(op.live_bytes), bar + mark)
    console.print(table)
    console.print(f"peak {human_bytes(mp.peak_bytes)} ({mp.peak_bytes:,} B) at op {peak.index} {escape(peak.op_type)}; "
                  f"{mp.total_macs:,} MACs", highlight=False)
    if budget is not None and patches is None:
        console.print(f"the plain schedule fits {human_bytes(budget)}: no patches needed", highlight=False)
    if patches is not None:
        console.print(f"patch plan: {escape(patches.describe())}", highlight=False)
        for k, st in enumerate(patches.stages):
            console.print(f"  stage {k + 1}: {escape(st.describe(mp.ops))}", highlight=False)
            console.print(f"    resident while it runs: {human_bytes(planner.live_across(st.first))} made before it "
                          f"(its inputs {', '.join(escape(t) for t in st.inputs[:4])}"
                          f"{' ...' if len(st.inputs) > 4 else ''}, and what later ops still need); stored: "
                          f"{', '.join(escape(t) for t in st.outputs[:4])}{' ...' if len(st.outputs) > 4 else ''} "
                          "(read after the stage: the next op, skip connections)", highlight=False)
    if plot is not None:
        console.print(f"plot: {escape(str(plot))}", highlight=False)
    if save_model is not None:
        console.print(f"patched model: {escape(str(save_model))}", highlight=False)

P_MEASURE, P_LLM, P_BACKEND, P_POWER, P_OUTPUT, P_DEVICES = (
    "Measurement", "Language models (llama-bench's flags)", "Backend", "Per-op time and power", "Output",
    "Remote devices")


@app.command()
def profile(
    model: Optional[Path] = typer.Argument(None, metavar="MODEL", help="A model file: .onnx, .tflite, .gguf, .mlpackage.", show_default=False),
    runs: int = typer.Option(100, "--runs", metavar="N", rich_help_panel=P_MEASURE,
                             help="At least N timed calls (benchmark_model --num_runs)."),
    min_secs: float = typer.Option(2.0, "--min-secs", metavar="S", rich_help_panel=P_MEASURE,
                                   help="...and at least S seconds of them (benchmark_model --min_secs): cv needs data."),
    min_sample_ms: float = typer.Option(20.0, "--min-sample-ms", metavar="MS", rich_help_panel=P_MEASURE,
                                        help="Calls faster than this are timed in groups this long, one sample per "
                                             "group (timeit's rule; 0: every call its own sample)."),
    duration: Optional[float] = typer.Option(None, "--duration", metavar="S", rich_help_panel=P_MEASURE,
                                             help="A time budget in seconds instead of --runs / --min-secs."),
    warmup: int = typer.Option(10, "--warmup", metavar="N", rich_help_panel=P_MEASURE, help="Untimed calls first."),
    threads: Optional[str] = typer.Option(None, "--threads", "-t", metavar="N[,N..]", rich_help_panel=P_MEASURE,
                                          help="Intra-op threads; a list profiles each (llama-bench -t 1,2,4)."),
    batch: str = typer.Option("1", "--batch", "-b", metavar="N[,N..]", rich_help_panel=P_MEASURE,
                              help="Batch size where the batch axis is dynamic; a list profiles each."),
    sweep: list[str] = typer.Option([], "--sweep", metavar="NAME=V,V", rich_help_panel=P_MEASURE,
                                    help="Profile several settings: threads=1,2,4 or batch=1,8 (repeatable)."),
    input: Optional[Path] = typer.Option(None, "--input", "-i", metavar="FILE.npz", rich_help_panel=P_MEASURE,
                                         help="Real inputs instead of random ones."),
    n_prompt: str = typer.Option("128", "-p", "--n-prompt", metavar="N[,N..]", rich_help_panel=P_LLM,
                                 help="GGUF: prompt tokens per test (llama-bench -p; a list runs each)."),
    n_gen: str = typer.Option("64", "-n", "--n-gen", metavar="N[,N..]", rich_help_panel=P_LLM,
                              help="GGUF: generated tokens per test (llama-bench -n; a list runs each)."),
    repetitions: Optional[int] = typer.Option(None, "-r", "--repetitions", metavar="N", rich_help_panel=P_LLM,
                                              help="GGUF: repetitions of each test (llama-bench -r; default 5)."),
    n_gpu_layers: Optional[int] = typer.Option(None, "-ngl", "--n-gpu-layers", metavar="N", rich_help_panel=P_LLM,
                                               help="GGUF on llama.cpp: layers offloaded to the GPU (llama-bench -ngl)."),
    rpc: Optional[str] = typer.Option(None, "--rpc", metavar="FLEET.toml|HOST:PORT[=MEM],..", rich_help_panel=P_LLM,
                                      help="GGUF across llama.cpp RPC servers (edge serve-rpc; llama-bench --rpc): layers "
                                           "split by each device's memory."),
    backend: str = typer.Option("auto", "--backend", metavar="NAME", rich_help_panel=P_BACKEND,
                                help="auto, onnxruntime, litert, tflite-runtime, coreml, llama.cpp, edge."),
    ep: list[str] = typer.Option([], "--ep", "--providers", metavar="EP[,EP..]", rich_help_panel=P_BACKEND,
                                 help="ONNX Runtime execution providers in order: cpu, cuda, tensorrt, coreml, openvino, qnn "
                                      "(or full names); the CPU is added last as the fallback."),
    ep_option: list[str] = typer.Option([], "--ep-option", metavar="EP:KEY=VALUE", rich_help_panel=P_BACKEND,
                                        help="A provider option, e.g. tensorrt:trt_fp16_enable=True (repeatable)."),
    delegate: Optional[str] = typer.Option(None, "--delegate", metavar="NAME", rich_help_panel=P_BACKEND,
                                           help="LiteRT: xnnpack (default), none, gpu, nnapi, or a delegate library .so."),
    memory_budget: Optional[str] = typer.Option(
        None, "--memory-budget", metavar="SIZE", rich_help_panel=P_BACKEND,
        help="Profile under a memory budget: ONNX CNNs patch by patch, GGUF (--backend edge) with weights streamed."),
    per_op: bool = typer.Option(True, "--per-op/--no-per-op", rich_help_panel=P_POWER, help="Per-op time from the backend's profiler."),
    top: int = typer.Option(10, "--top", metavar="N", rich_help_panel=P_POWER, help="Slowest nodes to list."),
    benchmark_model: Optional[str] = typer.Option(None, "--benchmark-model", metavar="PATH", rich_help_panel=P_POWER,
                                                  help=".tflite per-op time from LiteRT's benchmark_model (default: on PATH)."),
    power: str = typer.Option("auto", "--power", metavar="SOURCE", rich_help_panel=P_POWER,
                              help="auto, none, or a source name (--list-power)."),
    power_rate: float = typer.Option(10.0, "--power-rate", metavar="HZ", rich_help_panel=P_POWER, help="Power samples per second."),
    idle: float = typer.Option(2.0, "--idle", metavar="S", rich_help_panel=P_POWER, help="Seconds of idle power baseline first."),
    list_power: bool = typer.Option(False, "--list-power", rich_help_panel=P_POWER,
                                    help="List the power sources and which are present, then exit."),
    output: str = typer.Option("table", "--output", "-o", metavar="FORMAT", rich_help_panel=P_OUTPUT,
                               help="What to print on stdout: table, json, md or csv (llama-bench -o)."),
    json_out: Optional[Path] = typer.Option(None, "--json", metavar="FILE", rich_help_panel=P_OUTPUT,
                                            help="Write the report as JSON (schema edgelift/profile v1)."),
    markdown: Optional[Path] = typer.Option(None, "--markdown", metavar="FILE", rich_help_panel=P_OUTPUT, help="Write the report as Markdown."),
    html: Optional[Path] = typer.Option(None, "--html", metavar="FILE", rich_help_panel=P_OUTPUT,
                                        help="Write a self-contained HTML report with plots."),
    label: Optional[str] = typer.Option(None, "--label", metavar="NAME", rich_help_panel=P_OUTPUT,
                                        help="Name of this model in comparisons (default: file name)."),
    accuracy: Optional[float] = typer.Option(None, "--accuracy", metavar="X", rich_help_panel=P_OUTPUT,
                                             help="Model accuracy to carry into the report (Pareto plots)."),
    device: list[str] = typer.Option([], "--device", "-d", metavar="URL", rich_help_panel=P_DEVICES,
                                     help="Profile there: local, ssh://user@host:port, adb://SERIAL (repeatable: a fleet)."),
    devices: Optional[Path] = typer.Option(None, "--devices", metavar="FLEET.toml", rich_help_panel=P_DEVICES,
                                           help="A fleet file of \\[\\[device]] tables with url = ..., profiled concurrently."),
    device_binary: Optional[Path] = typer.Option(None, "--device-binary", metavar="PATH", rich_help_panel=P_DEVICES,
                                                 help="adb: benchmark_model or llama-bench built for Android."),
    ssh_config: Optional[Path] = typer.Option(None, "--ssh-config", metavar="FILE", rich_help_panel=P_DEVICES,
                                              help="ssh: a config file instead of ~/.ssh/config."),
    accept_new_host_key: bool = typer.Option(False, "--accept-new-host-key", rich_help_panel=P_DEVICES,
                                             help="ssh: trust a host key seen for the first time (recorded in known_hosts)."),
    install: bool = typer.Option(False, "--install", rich_help_panel=P_DEVICES,
                                 help="ssh: install this machine's edgelift wheel into a venv on the device (checked by hash)."),
    remote_python: str = typer.Option("python3", "--remote-python", metavar="PATH", rich_help_panel=P_DEVICES,
                                      help="ssh: the device's Python."),
    remote_cache: str = typer.Option("~/.cache/edgelift", "--remote-cache", metavar="DIR", rich_help_panel=P_DEVICES,
                                     help="ssh: where models and the wheel are cached on the device."),
    jobs: int = typer.Option(4, "--jobs", metavar="N", rich_help_panel=P_DEVICES, help="Devices profiled at once (fleet)."),
    stream_results: bool = typer.Option(False, "--stream-results", hidden=True, help="Print each run as a JSON line (remote runs)."),
) -> None:
    """Latency, memory, per-op time, LLM token rates, power and energy of a model on this device."""
    from .errors import InvalidOptionError
    from .profilers.profile import ProfileOptions, parse_sweep
    from .profilers.profile import profile as run_profile

    if list_power:
        from .profilers.power import POWER_SOURCES, DeviceEnv

        env = DeviceEnv()
        for name, cls in POWER_SOURCES.items():
            src = cls.detect(env)
            console.print(f"{name:18} {'present: ' + escape(src.describe()) if src else 'absent'}", highlight=False)
            if src is not None:
                src.close()
        return
    interrupted = False
    try:
        if model is None:
            raise InvalidOptionError("give the model to profile: edge profile MODEL (or --list-power)")
        from .core.hub_cache import resolve_model_path

        model = resolve_model_path(model)
        _check_output_format(output)
        from .core.atomic import ensure_writable_dir
        from .errors import OutputError

        for out in (json_out, markdown, html):  # fail before minutes of measuring, not after
            if out is not None:
                if Path(out).is_dir():
                    raise InvalidOptionError(f"{out} is a directory: give a file name for the report")
                if not Path(out).parent.is_dir():
                    raise OutputError(f"cannot write {out} (no such directory); choose another path")
                ensure_writable_dir(Path(out).parent)
        thread_list = int_list("-t/--threads", threads) if threads is not None else []
        batch_list, prompt_list, gen_list = (int_list("-b/--batch", batch), int_list("-p/--n-prompt", n_prompt),
                                             int_list("-n/--n-gen", n_gen))
        load_options = backend_options(ep, ep_option, delegate, n_gpu_layers)
        if memory_budget is not None:
            load_options["memory_budget"] = memory_budget
        if rpc is not None:
            from .core.formats import ModelFormat as _Fmt, detect_format as _detect

            if _detect(model) is not _Fmt.GGUF or backend not in ("auto", "llama.cpp") or device or devices:
                raise InvalidOptionError("--rpc splits a GGUF model across llama.cpp RPC servers from this host: give a "
                                         ".gguf model (backend llama.cpp), without --device/--devices")
            load_options["devices"] = rpc
            backend = "llama.cpp"
        if device or devices is not None:
            from .profilers.targets.cli import profile_on_devices

            if input is not None:
                raise InvalidOptionError("--input is not sent to devices yet: profile remote devices with random inputs")
            forwarded = ["--runs", str(runs), "--min-secs", str(min_secs), "--min-sample-ms", str(min_sample_ms), "--warmup", str(warmup), "--batch", batch,
                         "--backend", backend, "--power", power, "--power-rate", str(power_rate), "--idle", str(idle),
                         "--top", str(top), "-p", n_prompt, "-n", n_gen, "--per-op" if per_op else "--no-per-op"]
            forwarded += [x for s_ in sweep for x in ("--sweep", s_)]
            forwarded += [] if duration is None else ["--duration", str(duration)]
            forwarded += [] if threads is None else ["--threads", threads]
            forwarded += [] if repetitions is None else ["-r", str(repetitions)]
            forwarded += [] if n_gpu_layers is None else ["-ngl", str(n_gpu_layers)]
            forwarded += [x for e in ep for x in ("--ep", e)] + [x for e in ep_option for x in ("--ep-option", e)]
            forwarded += [] if delegate is None else ["--delegate", delegate]
            forwarded += [] if accuracy is None else ["--accuracy", str(accuracy)]
            forwarded += [] if memory_budget is None else ["--memory-budget", memory_budget]
            profile_on_devices(console, err_console, model, device, devices, forwarded, dict(
                device_binary=device_binary, ssh_config=ssh_config, accept_new_host_key=accept_new_host_key,
                install=install, remote_python=remote_python, remote_cache=remote_cache, jobs=jobs, json_out=json_out, markdown=markdown,
                html=html, label=label, threads=thread_list[0] if thread_list else None, runs=runs, warmup=warmup,
                n_prompt=prompt_list[0], n_gen=gen_list[0], power_rate=power_rate, idle=idle,
                lists={k: v for k, v in (("threads", thread_list), ("n_prompt", prompt_list), ("n_gen", gen_list))
                       if len(v) > 1}, delegate=delegate,
                n_gpu_layers=n_gpu_layers))
            return
        grid = parse_sweep(sweep)
        for key, values in (("threads", thread_list), ("batch", batch_list), ("n_prompt", prompt_list),
                            ("n_gen", gen_list)):
            if len(values) > 1:
                if key in grid:
                    raise InvalidOptionError(f"{key} is given both as a list and in --sweep: use one")
                grid[key] = values
        from .core.formats import ModelFormat, detect_format

        from .runtimes.onnx_llm import is_language_model_file

        is_llm = is_language_model_file(model)
        if repetitions is not None and not is_llm:
            raise InvalidOptionError("-r/--repetitions repeats llama-bench's tests on GGUF models; for other models "
                                     "use --runs N, --min-secs S or --duration S")
        opts = ProfileOptions(runs=runs, warmup=warmup, duration_s=duration, min_time_s=min_secs,
                              min_sample_ns=int(min_sample_ms * 1e6),
                              threads=thread_list[0] if len(thread_list) == 1 else None,
                              batch=batch_list[0], backend=backend, per_op=per_op, top=top, power=power,
                              power_rate_hz=power_rate, idle_s=idle, n_prompt=prompt_list[0], n_gen=gen_list[0],
                              repetitions=repetitions or 5, input=input, accuracy=accuracy,
                              benchmark_model=benchmark_model, load_options=load_options)
        if rpc is not None:  # the servers' own memory is read over ssh:// urls a fleet file gives
            from .profilers.targets.base import RemoteOptions

            opts.remote = RemoteOptions(ssh_config=ssh_config, accept_new_host_key=accept_new_host_key,
                                        remote_python=remote_python)
        if stream_results:  # the device side of a remote run: machine-readable lines on stdout
            import json as _json

            def emit(run: dict) -> None:
                print("@@edge-run " + _json.dumps(run), flush=True)

            report = run_profile(model, opts, sweep=grid, on_run=emit)
            print("@@edge-report " + _json.dumps(report.doc), flush=True)
            return
        report = _profile_with_progress(run_profile, model, opts, grid)
        interrupted = bool(report.doc.get("partial"))
        if label:
            report.doc["model"]["label"] = label
        written = []
        for path, write in ((json_out, report.write_json), (markdown, report.write_markdown), (html, report.write_html)):
            if path is not None:
                written.append(str(write(path)))
    except EdgeError as e:
        _fail(e)
    emit_profile(report, output)
    for w in written:
        err_console.print(f"wrote {escape(w)}", highlight=False)
    if interrupted:
        err_console.print("interrupted: the report holds what was measured before Ctrl-C (marked partial)")
        raise typer.Exit(code=130)


OUTPUT_FORMATS = ("table", "json", "md", "csv")


def _check_output_format(output: str) -> None:
    from .errors import InvalidOptionError

    if output not in OUTPUT_FORMATS:
        raise InvalidOptionError(f"-o {output}: choose one of {', '.join(OUTPUT_FORMATS)}")


def _write_stdout(text: str) -> None:
    """A whole report on stdout for pipes (-o json|md|csv), newline-terminated; warnings stay on stderr."""
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


def _profile_with_progress(run_profile, model: Path, opts, grid: dict):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=True, disable=not err_console.is_terminal) as bar:
        tasks: dict[str, int] = {}

        def on_progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total or None)
            bar.update(tasks[stage], completed=done, total=total or None)
            if done == total:
                bar.remove_task(tasks.pop(stage))

        return run_profile(model, opts, sweep=grid, progress=on_progress)


def emit_profile(report, output: str) -> None:
    """The report on stdout: the table (default), or the whole report as JSON, Markdown or CSV for pipes."""
    if output == "table":
        print_profile(report.doc)
        return
    from .profilers.report import profile_csv, profile_markdown

    text = {"json": lambda: report.to_json(), "md": lambda: profile_markdown(report.doc),
            "csv": lambda: profile_csv(report.doc)}[output]()
    _write_stdout(text)
    for w in report.doc.get("warnings", []):
        err_console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)


def int_list(flag: str, text: str) -> list[int]:
    """``"128,512"`` -> ``[128, 512]`` (llama-bench's comma lists); one line naming the flag otherwise."""
    from .errors import InvalidOptionError
    from .profilers.profile import parse_int_list

    values = parse_int_list(text)
    if values is None:
        raise InvalidOptionError(f"{flag} {text!r}: write integers >= 1 separated by commas, e.g. 1,2,4")
    return values


def backend_options(ep: list[str], ep_option: list[str], delegate: Optional[str], n_gpu_layers: Optional[int]) -> dict:
    """Load options from the backend flags: ONNX Runtime providers (with their options), the LiteRT
    delegate, llama.cpp's GPU layers."""
    from .errors import InvalidOptionError

    from .runtimes.ort import provider_name

    out: dict = {}
    names = [e.strip() for spec in ep for e in spec.split(",") if e.strip()]
    settings: dict[str, dict[str, str]] = {}  # by ONNX Runtime's provider name: cuda, CUDA and CUDAExecutionProvider alike
    written: dict[str, str] = {}  # ...and as the user wrote it, for the refusal
    for spec in ep_option:
        who, _, kv = spec.partition(":")
        key, eq, value = kv.partition("=")
        if not who or not key or not eq:
            raise InvalidOptionError(f"--ep-option {spec!r}: write EP:KEY=VALUE, e.g. tensorrt:trt_fp16_enable=True")
        full = provider_name(who)
        settings.setdefault(full, {})[key.strip()] = value.strip()
        written.setdefault(full, who.strip().lower())
    if settings and not names:
        raise InvalidOptionError("--ep-option needs --ep naming that provider")
    if names:
        unused = set(settings) - {provider_name(n) for n in names}
        if unused:
            raise InvalidOptionError(f"--ep-option for {sorted(written[u] for u in unused)}, which --ep does not name")
        out["providers"] = [(n, settings[provider_name(n)]) if provider_name(n) in settings else n for n in names]
    if delegate is not None:
        out["delegate"] = delegate
    if n_gpu_layers is not None:
        out["n_gpu_layers"] = n_gpu_layers
    return out


def placement_text(ops: dict) -> str:
    """"CUDA 40 nodes (96% of node time), CPU 3 nodes (4%); 3 partitions": which nodes fell back."""
    shares = ", ".join(f"{p['provider'].replace('ExecutionProvider', '')} {p['nodes']} nodes ({p['percent']:.0f}% of node time)"
                       for p in ops["providers"])
    n = ops.get("partitions")
    return shares + ("" if n is None else f"; {n} partition{'s' if n != 1 else ''}")


def print_profile(doc: dict) -> None:
    m, d = doc["model"], doc["device"]
    table = Table(box=box.SIMPLE_HEAD, title=escape(f"{m['name']} ({m['format']}, {_human_bytes(m['size_bytes'])}) "
                                                    f"on {d.get('model') or d.get('hostname')}"))
    unit = doc["runs"][0].get("latency_unit", "inference")
    for col in ("setting", "backend", "median ms", "mean", "p90", "p99", "cv", "samples", f"{unit}s/s", "load ms",
                "first ms", "peak RSS", "energy/run"):
        table.add_column(col, justify="left" if col in ("setting", "backend") else "right", no_wrap=True)
    for r in doc["runs"]:
        lat, p = r["latency"], r["power"]
        cv = f"{lat['cv']:.1%}" + (" [yellow]![/]" if lat["unreliable"] else "")
        energy = "n/a" if not p.get("available") else f"{p['energy_per_inference_j'] * 1e3:.2f} mJ"
        rss = r["memory"]["peak_rss_inference_bytes"]
        ms = lambda ns, digits=3: "n/a" if ns is None else f"{ns / 1e6:.{digits}f}"  # noqa: E731 - phones report fewer
        loops = lat.get("loops_per_sample") or 1
        samples = f"{lat['n_samples']}" + (f"x{loops}" if loops > 1 else "")
        table.add_row(escape(r["label"]), r["backend"], *(ms(lat[k]) for k in ("median_ns", "avg_ns", "p90_ns", "p99_ns")),
                      cv, samples, f"{lat['throughput_per_s']:.1f}", ms(r.get("load_ns"), 1), ms(r.get("first_ns"), 2),
                      "n/a" if rss is None else _human_bytes(rss), energy)
    console.print(table)
    for r in doc["runs"]:
        if r.get("llm"):
            q = r["llm"]
            console.print(f"{escape(r['label'])}: pp{q['n_prompt']} {q['pp_avg_ts']:.1f} ± {q['pp_stddev_ts']:.1f} tok/s, "
                          f"tg{q['n_gen']} {q['tg_avg_ts']:.1f} ± {q['tg_stddev_ts']:.1f} tok/s, TTFT {q['ttft_ms']:.1f} ms, "
                          f"{q['tpot_ms']:.2f} ms/token", highlight=False)
            if q.get("rpc"):
                rpc = q["rpc"]
                shares = ", ".join(f"{d['endpoint']} {100 * x:.0f}%" for d, x in
                                   zip(rpc["devices"], rpc["tensor_split"][-len(rpc["devices"]):]))
                console.print(f"{escape(r['label'])}: layers over {len(rpc['devices'])} RPC server(s) ({escape(shares)}); "
                              f"{rpc['network_bytes_per_token'] / 1e3:.1f} kB/token on the network while decoding",
                              highlight=False)
                held = ", ".join(f"{d['endpoint']} {_human_bytes(d['allocated_bytes'])}" for d in rpc["devices"]
                                 if d.get("allocated_bytes") is not None)
                if held:
                    console.print(f"{escape(r['label'])}: allocated on each server (weights, KV, compute): {escape(held)}",
                                  highlight=False)
                resident = ", ".join(f"{d['endpoint']} " + (
                    f"{_human_bytes(d['server_rss_bytes'])} (peak {_human_bytes(d['server_peak_rss_bytes'])})"
                    if d.get("server_rss_bytes") is not None else d.get("server_note", "not measured"))
                    for d in rpc["devices"])
                console.print(f"{escape(r['label'])}: each server process resident: {escape(resident)}", highlight=False)
        metrics = (r["power"] or {}).get("metrics") or {}
        if metrics:
            console.print(f"{escape(r['label'])}: during the runs: " + escape(", ".join(
                f"{name} mean {m['mean']:.1f} max {m['max']:.1f}" for name, m in metrics.items())), highlight=False)
        if r.get("ops"):
            top = ", ".join(f"{o['op_type']} {o['percent']:.0f}%" for o in r["ops"]["by_type"][:5])
            console.print(f"{escape(r['label'])}: time by op type: {escape(top)}", highlight=False)
            if r["ops"].get("providers"):
                console.print(f"{escape(r['label'])}: placement: {escape(placement_text(r['ops']))}", highlight=False)
    for w in doc.get("warnings", []):
        console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)


@app.command()
def report(
    reports: list[Path] = typer.Argument(..., metavar="REPORT.json...", help="Profile reports written by edge profile --json."),
    html: Optional[Path] = typer.Option(None, "--html", help="Write the comparison as one self-contained HTML file."),
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="Write the comparison as Markdown."),
    output: str = typer.Option("table", "--output", "-o", metavar="FORMAT",
                               help="What to print on stdout: table, json (the rows), md or csv."),
) -> None:
    """Compare profiles (formats, quantizations, devices) side by side: table and Pareto plot."""
    from .core.atomic import atomic_write_text
    from .profilers.html import comparison_rows
    from .profilers.report import comparison_markdown, load_report

    try:
        _check_output_format(output)
        docs = [load_report(p) for p in reports]
        if html is not None:
            from .profilers.html import render_comparison_html

            atomic_write_text(html, render_comparison_html(docs))
        if markdown is not None:
            atomic_write_text(markdown, comparison_markdown(docs))
    except EdgeError as e:
        _fail(e)
    if output != "table":
        import csv
        import io
        import json as _json

        rows = comparison_rows(docs)
        if output == "json":
            text = _json.dumps(rows, indent=1)
        elif output == "md":
            text = comparison_markdown(docs)
        else:
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
            text = buf.getvalue()
        _write_stdout(text)
        return
    table = Table(box=box.SIMPLE_HEAD, title="profile comparison")
    for col in ("model", "format", "backend", "device", "median ms", "mean ms", "p99 ms", "size", "peak RSS",
                "energy/run", "accuracy"):
        table.add_column(col, justify="left" if col in ("model", "format", "backend", "device") else "right")
    for r in comparison_rows(docs):
        table.add_row(escape(r["label"]) + (" [yellow](partial)[/]" if r["partial"] else ""), r["format"], r["backend"],
                      escape(str(r["device"])),
                      *("n/a" if r[k] is None else f"{r[k] / 1e6:.3f}" for k in ("median_ns", "mean_ns", "p99_ns")),
                      "n/a" if r["size_bytes"] is None else _human_bytes(r["size_bytes"]), "n/a" if r["peak_rss_bytes"] is None else _human_bytes(r["peak_rss_bytes"]),
                      "n/a" if r["energy_j"] is None else f"{r['energy_j'] * 1e3:.2f} mJ",
                      "n/a" if r["accuracy"] is None else f"{r['accuracy']:.4f}")
    console.print(table)
    for path in (html, markdown):
        if path is not None:
            console.print(f"wrote {escape(str(path))}", highlight=False)


@app.command()
def devices(
    device: list[str] = typer.Option([], "--device", "-d", help="local, ssh://user@host[:port], adb://SERIAL (repeatable)."),
    devices_file: Optional[Path] = typer.Option(None, "--devices", help="fleet.toml with \\[\\[device]] url = ... entries."),
    ssh_config: Optional[Path] = typer.Option(None, "--ssh-config", help="ssh: a config file instead of ~/.ssh/config."),
    accept_new_host_key: bool = typer.Option(False, "--accept-new-host-key", help="ssh: trust a host key seen for the first time."),
    remote_python: str = typer.Option("python3", "--remote-python", help="ssh: the device's Python."),
) -> None:
    """List configured devices: reachable or not, model, OS, Python, edgelift and backends, free memory."""
    from .profilers.targets.base import RemoteOptions
    from .profilers.targets.cli import list_devices

    try:
        failed = list_devices(console, device, devices_file, RemoteOptions(
            ssh_config=ssh_config, accept_new_host_key=accept_new_host_key, remote_python=remote_python))
    except EdgeError as e:
        _fail(e)
    if failed:
        raise typer.Exit(code=2)


@app.command("serve-rpc")
def serve_rpc(
    host: str = typer.Option("127.0.0.1", "--host", "-H", help="Address to bind (llama.cpp rpc-server -H). The protocol has "
                                                             "no authentication: bind to a trusted network only."),
    port: int = typer.Option(50052, "--port", "-p", help="Port (rpc-server -p)."),
    threads: int = typer.Option(1, "--threads", "-t", help="CPU threads for this device's share of the model."),
    memory: Optional[str] = typer.Option(None, "--memory", metavar="SIZE", help="Cap this server's memory (512MiB, 2GiB)."),
    fleet: Optional[Path] = typer.Option(None, "--fleet", metavar="FLEET.toml",
                                         help="Start a server on each \\[\\[device]] with url = \"ssh://...\" and rpc = "
                                              "\"address:port\" (memory, threads optional) and keep them until Ctrl-C."),
    install: bool = typer.Option(False, "--install", help="ssh: install this machine's edgelift wheel on each device (checked by hash)."),
    ssh_config: Optional[Path] = typer.Option(None, "--ssh-config", help="ssh: a config file instead of ~/.ssh/config."),
    accept_new_host_key: bool = typer.Option(False, "--accept-new-host-key", help="ssh: trust a host key seen for the first time."),
    remote_python: str = typer.Option("python3", "--remote-python", help="ssh: the device's Python."),
) -> None:
    """Serve this device to llama.cpp hosts (its RPC backend), or start servers on a fleet over SSH;
    edge run model.gguf --rpc HOST:PORT[=MEM],... uses them."""
    from .errors import InvalidOptionError

    if fleet is not None:
        from .profilers.targets.base import RemoteOptions
        from .profilers.targets.rpc_launch import read_rpc_fleet, start_servers, stop_servers

        servers = []
        try:
            servers = read_rpc_fleet(fleet)
            start_servers(servers, RemoteOptions(ssh_config=ssh_config, accept_new_host_key=accept_new_host_key,
                                                 remote_python=remote_python, install=install,
                                                 install_extras=("llama",)),
                          on_line=lambda line: err_console.print(escape(line), highlight=False))
            console.print(f"--rpc {','.join(s.device for s in servers)}", highlight=False)
            err_console.print("serving until Ctrl-C (each server stops with its connection)", highlight=False)
            while all(s.process is not None and s.process.poll() is None for s in servers):
                time.sleep(0.5)
            gone = [s.url for s in servers if s.process is None or s.process.poll() is not None]
            raise InvalidOptionError(f"the RPC server on {', '.join(gone)} stopped (connection dropped or killed); "
                                     "the others were stopped too")
        except EdgeError as e:
            stop_servers(servers)
            _fail(e)
        except KeyboardInterrupt:
            stop_servers(servers)
            return
    from .runtimes.rpc import main as serve_main

    argv = ["--host", host, "--port", str(port), "--threads", str(threads)] + (["--memory", memory] if memory else [])
    if not 0 < port < 65536 or threads < 1:
        _fail(InvalidOptionError(f"--port must be 1-65535 and --threads >= 1, got {port} and {threads}"))
    serve_main(argv)


INTERNAL_ERROR_EXIT = 70  # EX_SOFTWARE: edgelift's own bug, not the user's input (that is exit 2)
DEBUG_ENV = "EDGELIFT_DEBUG"


def main() -> None:
    import os

    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except Exception as e:  # a bug: one line and how to report it; the traceback on request
        if os.environ.get(DEBUG_ENV):
            raise
        what = " ".join(f"{type(e).__name__}: {e}".split())[:300]
        err_console.print(f"[bold red]error:[/] internal error ({escape(what)}); this is a bug in edgelift: rerun with "
                          f"{DEBUG_ENV}=1 for the traceback and report it", highlight=False, soft_wrap=True)
        sys.exit(INTERNAL_ERROR_EXIT)


if __name__ == "__main__":
    main()
