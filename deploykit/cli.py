"""The `deploykit` command: a thin click layer over the Python API.

Each command parses its options, calls one API function and prints. Heavy imports (torch, onnx)
happen inside commands so that `deploykit --help` is instant. Errors print one line and exit
non-zero; `--debug` (anywhere on the command line) shows the traceback instead.
"""

from __future__ import annotations

import json
import sys

import click

from .errors import DeploykitError, UserInputError


def _shape_value(ctx, param, value):
    """click callback: parse a shape option, reporting a bad one as click's own usage error."""
    if value is None:
        return None
    from .shapes import parse_shape

    try:
        return parse_shape(value)
    except UserInputError as exc:
        raise click.BadParameter(str(exc)) from None


def _shape_option(required=False, help_text="input shape, e.g. 1,3,224,224"):
    return click.option("--input-shape", "input_shape", default=None, required=required,
                        callback=_shape_value, help=help_text)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="show the Python traceback of any error")
@click.version_option(package_name="deploykit")
def cli(debug):
    """Take a trained PyTorch CNN to a fast, verified inference artefact."""


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
def zoo(as_json):
    """List the reference models with their input shape, parameters and MACs."""
    from .zoo import describe_zoo

    rows = describe_zoo()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'name':<12} {'input':<14} {'params':>13} {'MACs':>16}  description")
    for r in rows:
        shape = "x".join(map(str, r["input_shape"]))
        click.echo(f"{r['name']:<12} {shape:<14} {r['params']:>13,} {r['macs']:>16,}  {r['description']}")


@cli.command()
@click.argument("model")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="ONNX file to write")
@click.option("--weights", type=click.Path(dir_okay=False), help="state_dict to load (weights only)")
@_shape_option()
@click.option("--dynamic-batch/--static-batch", default=True, show_default=True, help="batch dimension dynamic")
@click.option("--dynamic-spatial", is_flag=True, help="also make H and W dynamic")
@click.option("--opset", type=click.IntRange(7, 23), default=17, show_default=True)
@click.option("--tolerance", type=click.FloatRange(min=0), default=1e-4, show_default=True,
              help="max relative error allowed against PyTorch")
@click.option("--exporter", type=click.Choice(["torchscript", "dynamo"]), default="torchscript", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
def export(model, output, weights, input_shape, dynamic_batch, dynamic_spatial, opset, tolerance, exporter, as_json):
    """Export MODEL (zoo name, file.py:factory, or TorchScript/torch.export archive) to ONNX, proven in ONNX Runtime."""
    from .exporter import export as do_export

    result = do_export(model, output, weights=weights, input_shape=input_shape, dynamic_batch=dynamic_batch,
                       dynamic_spatial=dynamic_spatial, opset=opset, tolerance=tolerance, exporter=exporter)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    dyn = ", ".join(f"{k}[{','.join(map(str, v.values()))}]" for k, v in result.dynamic_axes.items() if k == "input")
    click.echo(f"exported {result.source} -> {result.path} (opset {result.opset}, {result.exporter} exporter, "
               f"{result.seconds:.2f} s; dynamic: {dyn or 'none'})")
    click.echo("onnx.checker: ok")
    for c in result.checks:
        click.echo(f"parity vs PyTorch at {'x'.join(map(str, c.input_shape))}: max abs {c.max_abs:.2e}, "
                   f"max rel {c.max_rel:.2e} (tolerance {tolerance:g})")


@cli.command(name="inspect")
@click.argument("model", type=click.Path())
@_shape_option(help_text="input shape when the model's is dynamic (default: the one recorded at export)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def inspect_cmd(model, input_shape, as_json):
    """Per-layer shapes, parameters, MACs and activation memory of an ONNX model."""
    from .inspect import format_report, inspect_model

    report = inspect_model(model, input_shape)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else format_report(report))


@cli.command()
@click.argument("model", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="ONNX file to write")
@click.option("--fold/--no-fold", default=True, show_default=True, help="fold BatchNorm into the layer before")
@click.option("--fuse/--no-fuse", default=True, show_default=True, help="fuse Conv+activation for the target")
@click.option("--fc-to-conv", is_flag=True, help="cast fully-connected layers into convolutions")
@click.option("--bottleneck", "bottleneck", default=None,
              help="insert low-rank 1x1 bottlenecks: rank=16, ratio=0.25, energy=0.95 or macs=0.5")
@click.option("--bottleneck-layers", default=None, help="comma-separated Conv node names to consider")
@click.option("--fp16", is_flag=True, help="float16 weights and compute")
@click.option("--fp16-io", is_flag=True, help="with --fp16: float16 inputs and outputs too")
@click.option("--int8", is_flag=True, help="static int8 quantization (needs --calibration)")
@click.option("--calibration", default=None,
              help="calibration data: a folder of images, an .npy/.npz file, or 'digits'")
@click.option("--calibration-method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax",
              show_default=True)
@click.option("--target", type=click.Choice(["ort", "tensorrt"]), default="ort", show_default=True)
@click.option("--ort-layout", is_flag=True,
              help="bake ONNX Runtime's CPU layout (NCHWc) into the model: full speed without graph "
                   "optimisation at load, but tied to this CPU's vector extensions")
@_shape_option(help_text="input shape for verification (default: the one recorded at export)")
@click.option("--tolerance", type=click.FloatRange(min=0), default=1e-4, show_default=True,
              help="max relative deviation of an exact pass")
@click.option("--max-error", type=click.FloatRange(min=0), default=None,
              help="fail when an approximating pass deviates more than this (relative)")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None, help="write the report as JSON")
def optimize(model, output, fold, fuse, fc_to_conv, bottleneck, bottleneck_layers, fp16, fp16_io, int8,
             calibration, calibration_method, target, ort_layout, input_shape, tolerance, max_error, report_path):
    """Run verified graph passes over an ONNX model (default: cleanup, fold, fuse)."""
    from .optimize import optimize_model

    if int8 and not calibration:
        raise UserInputError("--int8 needs --calibration DATA (a folder of images, an .npy/.npz file, or 'digits')")
    if int8 and fp16:
        raise UserInputError("choose one of --int8 and --fp16")
    layers = [n.strip() for n in bottleneck_layers.split(",")] if bottleneck_layers else None
    report = optimize_model(model, output, fold=fold, fuse=fuse, target=target, fc_to_conv=fc_to_conv,
                            bottleneck=bottleneck, bottleneck_layers=layers, fp16=fp16, fp16_io=fp16_io,
                            int8=int8, calibration=calibration, calibration_method=calibration_method,
                            ort_layout=ort_layout, input_shape=input_shape, tolerance=tolerance, max_error=max_error,
                            progress=lambda name: click.echo(f"running {name} ...", err=True))
    for p in report.passes:
        kind = "exact" if p.exact else "approximate"
        click.echo(f"{p.name} ({kind}): nodes {p.nodes_before} -> {p.nodes_after}, params {p.params_before:,} -> "
                   f"{p.params_after:,}, MACs {p.macs_before:,} -> {p.macs_after:,}; deviation vs input: "
                   f"max abs {p.max_abs:.2e}, max rel {p.max_rel:.2e}"
                   + (f" (this pass alone: max rel {p.step_max_rel:.2e})" if p.step_max_rel != p.max_rel else ""))
        if p.accuracy_after is not None:
            click.echo(f"    digits test set: accuracy {p.accuracy_before:.2%} -> {p.accuracy_after:.2%}, "
                       f"{p.predictions_changed} prediction(s) changed, logits max rel {p.digits_max_rel:.2e}")
        for n in p.notes:
            click.echo(f"    {n}")
    click.echo(f"wrote {output}")
    if report_path:
        from .io import atomic_path

        with atomic_path(report_path) as tmp:
            tmp.write_text(json.dumps(report.to_dict(), indent=2) + "\n")


@cli.command()
@click.argument("model", type=click.Path())
@click.option("--image-size", type=click.IntRange(1), default=None, help="square image side (random image)")
@click.option("--image", "image_path", type=click.Path(dir_okay=False), default=None,
              help=".npy file with an (N, C, H, W) or (C, H, W) float32 image instead of a random one")
@click.option("--stride", type=click.IntRange(1), default=None, help="map stride (a divisor of the network's stride)")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None, help="write the score map as .npy")
@click.option("--check", is_flag=True, help="also evaluate every crop with the original model and compare")
def slide(model, image_size, image_path, stride, output, check):
    """Slide a classifier over a larger image in one pass (FC->CONV); print the score map."""
    import time

    import numpy as np

    from .slide import crop_session, evaluate_crops, sliding_model
    from .slide import slide as run_slide

    sm = sliding_model(model)
    if image_path:
        try:
            image = np.load(image_path, allow_pickle=False).astype(np.float32)
        except Exception as exc:
            raise UserInputError(f"cannot read {image_path} as a .npy array: {exc}") from exc
        image = image[None] if image.ndim == 3 else image
    elif image_size:
        channels = sm.session().get_inputs()[0].shape[1]
        image = np.random.default_rng(0).standard_normal((1, channels, image_size, image_size)).astype(np.float32)
    else:
        raise UserInputError("give --image-size N (random image) or --image FILE.npy")
    sm.session()  # load before timing: the figure below is the evaluation alone
    start = time.perf_counter()
    scores = run_slide(sm, image, stride)
    seconds = time.perf_counter() - start
    step = stride or sm.stride
    n, classes, rows, cols = scores.shape
    click.echo(f"score map {n}x{classes}x{rows}x{cols}: {rows}x{cols} crops of {sm.window[0]}x{sm.window[1]} at "
               f"stride {step} over a {image.shape[2]}x{image.shape[3]} image, {seconds * 1e3:.0f} ms "
               f"({(sm.stride // step) ** 2} pass(es))")
    top = scores[0].argmax(0)
    for r in range(rows):
        click.echo("  top class per cell: " + " ".join(f"{int(c):>4}" for c in top[r]))
    if check:
        session = crop_session(_original_from(model))
        start = time.perf_counter()
        reference = evaluate_crops(None, image, sm.window, step, session=session)
        crop_seconds = time.perf_counter() - start
        diff = np.abs(scores - reference)
        span = float(reference.max() - reference.min()) or 1.0
        click.echo(f"crop by crop: {crop_seconds * 1e3:.0f} ms; max |map - crops| = {diff.max():.3g} "
                   f"({diff.max() / span:.2%} of the score range); top class agrees in "
                   f"{int((reference[0].argmax(0) == top).sum())}/{rows * cols} cells")
        if sm.padded:
            click.echo("  (the network zero-pads its convolutions: cells see real pixels where a lone crop sees zeros)")
    if output:
        from .io import atomic_path

        with atomic_path(output) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, scores)


def _original_from(model):
    from . import io

    proto = io.load_model(model)
    if any(p.key.startswith("deploykit.fc_to_conv") for p in proto.metadata_props):
        raise UserInputError("--check needs the original (unconverted) model, to evaluate its crops")
    return proto


@cli.command()
@click.argument("model", type=click.Path())
@click.option("--backend", type=click.Choice(["ort-cpu", "ort-cuda", "ort-trt", "trt"]), required=True)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="artefact to write (.onnx or .plan)")
@click.option("--fp16", is_flag=True)
@click.option("--int8", is_flag=True, help="INT8 (give the QDQ model from 'optimize --int8 --target tensorrt')")
@click.option("--min-shape", callback=_shape_value, default=None, help="profile minimum input shape")
@click.option("--opt-shape", callback=_shape_value, default=None, help="profile optimum input shape")
@click.option("--max-shape", callback=_shape_value, default=None, help="profile maximum input shape")
@click.option("--workspace", "workspace_mb", type=click.IntRange(1), default=None, help="workspace limit in MB")
@click.option("--lean-memory", is_flag=True, help="ort-cpu: weights in a side file that ONNX Runtime maps, not copies")
@click.option("--json", "as_json", is_flag=True)
def build(model, backend, output, fp16, int8, min_shape, opt_shape, max_shape, workspace_mb, lean_memory, as_json):
    """Build MODEL.onnx into an artefact for a backend (cached: the same inputs reuse the built engine)."""
    from pathlib import Path

    from .backends import BuildOptions, get_backend
    from .io import check_output_path, load_model

    load_model(model, load_weights=False)
    check_output_path(output)
    options = BuildOptions(fp16=fp16, int8=int8, min_shape=min_shape, opt_shape=opt_shape, max_shape=max_shape,
                           workspace_mb=workspace_mb, lean_memory=lean_memory)
    result = get_backend(backend).build(Path(model), Path(output), options)
    if lean_memory and backend == "ort-cpu":
        from .io import save_model

        save_model(load_model(output), output, external_weights=True)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    how = "reused the cached engine" if result.cached else "built"
    click.echo(f"{how} {result.artefact} for {backend} ({options.precision}) in {result.seconds:.2f} s, "
               f"{result.size_bytes / 2**20:.1f} MiB; cache key {result.key}")


@cli.command(name="bench")
@click.argument("models", nargs=-1, required=True)
@click.option("--backend", "backends", multiple=True,
              type=click.Choice(["ort-cpu", "ort-cuda", "ort-trt", "trt", "torch"]),
              help="repeatable; default: ort-cpu (and torch for zoo names, trt for .plan)")
@click.option("--batch", "batches", default="1,8", show_default=True, help="comma-separated batch sizes")
@click.option("--warmup", type=click.IntRange(0), default=20, show_default=True)
@click.option("--iterations", type=click.IntRange(1), default=None)
@click.option("--duration", type=click.FloatRange(min=0.1), default=None, help="seconds per measurement (default 3)")
@click.option("--threads", type=click.IntRange(1), default=None)
@click.option("--lean-memory", is_flag=True, help="ONNX Runtime without prepacking or arena, weights mapped from a side file")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="write every figure and sample")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None, help="write a PNG")
@click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False), default=None)
def bench_cmd(models, backends, batches, warmup, iterations, duration, threads, lean_memory, json_path, plot_path,
              markdown_path):
    """Throughput, latency and memory of MODEL(s) per backend and batch size."""
    from pathlib import Path

    from . import bench as b
    from .io import atomic_path, check_output_path

    try:
        sizes = [int(v) for v in batches.split(",") if v.strip()]
        if not sizes or any(v < 1 for v in sizes):
            raise ValueError
    except ValueError:
        raise UserInputError(f"bad --batch {batches!r}: give positive integers like 1,8,32") from None
    for p in (json_path, plot_path, markdown_path):
        if p:
            check_output_path(p)
    def progress(i, n, label):
        # One line per measurement on a terminal, overwritten in place; plain lines in logs.
        done = int(30 * i / n) if n else 30
        text = f"[{'#' * done}{'.' * (30 - done)}] {i}/{n} {label}"
        if sys.stderr.isatty():
            click.echo("\r" + text.ljust(100), nl=i == n, err=True)
        else:
            click.echo(text, err=True)

    report = b.bench(list(models), list(backends) or None, sizes, warmup, iterations, duration, threads,
                     lean_memory, progress=progress)
    click.echo(b.format_table(report))
    if json_path:
        with atomic_path(json_path) as tmp:
            tmp.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    if markdown_path:
        with atomic_path(markdown_path) as tmp:
            tmp.write_text(b.format_markdown(report))
    if plot_path:
        b.plot(report, Path(plot_path))


def main(argv=None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name="deploykit", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        if debug:
            raise
        click.echo(f"error: {exc.format_message()}" + _usage_hint(exc), err=True)
        sys.exit(exc.exit_code)
    except DeploykitError as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # an unexpected failure still gets one line, and --debug for the rest
        if debug:
            raise
        click.echo(f"error: internal error {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                   " (rerun with --debug for the traceback)", err=True)
        sys.exit(1)


def _usage_hint(exc) -> str:
    ctx = getattr(exc, "ctx", None)
    return f" (see '{ctx.command_path} --help')" if ctx is not None else ""


if __name__ == "__main__":
    main()
