"""The `deploykit` command: a thin click layer over the Python API.

Each command parses its options, calls one API function and prints. Heavy imports (torch, onnx)
happen inside commands so that `deploykit --help` is instant. Errors print one line and exit
non-zero; `--debug` (anywhere on the command line) shows the traceback instead.
"""

from __future__ import annotations

import json
import math
import signal
import sys
from pathlib import Path

import click

from .errors import DeploykitError, UserInputError
from .errors import first_line as _first_line

# Backend names, from one place (deploykit.backends keeps its imports lazy, so this is cheap).
from .backends import BACKENDS as BENCH_BACKENDS  # noqa: E402

BUILD_BACKENDS = tuple(b for b in BENCH_BACKENDS if b != "torch")


class FiniteFloat(click.FloatRange):
    """A float range that also refuses nan and inf: `--tolerance nan` would switch a check off."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


def _shape_value(ctx, param, value):
    """click callback: parse a shape option, reporting a bad one as click's own usage error."""
    if value is None:
        return None
    from .shapes import parse_shape

    try:
        return parse_shape(value)
    except UserInputError as exc:
        raise click.BadParameter(str(exc)) from None


def _named_shapes_value(ctx, param, values):
    """click callback: repeated --input-shape [NAME:]1,3,224,224 -> {name or None: shape} (None when absent)."""
    from .signature import parse_shape_options

    try:
        return parse_shape_options(values)
    except UserInputError as exc:
        raise click.BadParameter(str(exc)) from None


def _profile_value(ctx, param, values):
    """--min/opt/max-shape: a bare shape (the first input) or NAME:SHAPE pairs, as BuildOptions takes them."""
    shapes = _named_shapes_value(ctx, param, values)
    if not shapes:
        return None
    if None in shapes:
        return shapes[None]
    return tuple(sorted(shapes.items()))


def _shape_option(help_text="input shape, e.g. 1,3,224,224"):
    return click.option("--input-shape", "input_shape", multiple=True, callback=_named_shapes_value,
                        help=help_text + "; NAME:1,3,224,224 for one input of several (repeatable)")


def _json_option(what="the result"):
    return click.option("--json", "as_json", is_flag=True, help=f"print {what} as one JSON document on stdout")


def _echo_json(data) -> None:
    click.echo(json.dumps(data, indent=2))


def _write_report(path, text: str, inputs=()) -> None:
    from .io import atomic_path

    with atomic_path(path, inputs) as tmp:
        tmp.write_text(text)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--debug", is_flag=True, help="show the Python traceback of any error (allowed anywhere on the line)")
@click.version_option(package_name="deploykit")
def cli(debug):
    """Take a trained PyTorch CNN to a fast, verified inference artefact."""


@cli.command()
@_json_option("the zoo")
def zoo(as_json):
    """List the reference models with their input shape, parameters and MACs."""
    from .zoo import describe_zoo

    rows = describe_zoo()
    if as_json:
        _echo_json(rows)
        return
    click.echo(f"{'name':<12} {'input':<14} {'params':>13} {'MACs':>16}  description")
    for r in rows:
        shape = "x".join(map(str, r["input_shape"]))
        click.echo(f"{r['name']:<12} {shape:<14} {r['params']:>13,} {r['macs']:>16,}  {r['description']}")


@cli.command()
@click.argument("model")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="ONNX file to write")
@click.option("--weights", type=click.Path(dir_okay=False), help="state_dict to load (weights only, never unpickled)")
@_shape_option("input shape to export and prove at (default: the zoo model's)")
@click.option("--dynamic-batch/--static-batch", default=True, help="make the batch dimension dynamic")
@click.option("--dynamic-spatial", is_flag=True, help="also make H and W dynamic")
@click.option("--opset", type=click.IntRange(7, 23), default=17,
              help="ONNX opset to write (the dynamo exporter writes 18 or more)")
@click.option("--tolerance", type=FiniteFloat(min=0), default=1e-4,
              help="max relative error allowed against PyTorch (max|diff| / max|reference|)")
@click.option("--exporter", type=click.Choice(["torchscript", "dynamo"]), default="torchscript",
              help="PyTorch exporter (.pt2 archives always use dynamo)")
@_json_option()
def export(model, output, weights, input_shape, dynamic_batch, dynamic_spatial, opset, tolerance, exporter, as_json):
    """Export MODEL (zoo name, file.py:factory, or TorchScript/torch.export archive) to ONNX, proven in ONNX Runtime."""
    from .exporter import export as do_export

    result = do_export(model, output, weights=weights, input_shape=input_shape, dynamic_batch=dynamic_batch,
                       dynamic_spatial=dynamic_spatial, opset=opset, tolerance=tolerance, exporter=exporter)
    if as_json:
        _echo_json(result.to_dict())
        return
    dyn = "; ".join(f"{k}[{','.join(map(str, v.values()))}]" for k, v in result.dynamic_axes.items()
                    if k in result.input_names)
    opset_note = f" (asked for {opset})" if result.opset != opset else ""
    click.echo(f"exported {result.source} -> {result.path} (opset {result.opset}{opset_note}, {result.exporter} "
               f"exporter, {result.seconds:.2f} s; dynamic: {dyn or 'none'})")
    click.echo("onnx.checker: ok")
    for c in result.checks:
        click.echo(f"parity vs PyTorch at {c.describe_shape()}: max abs {c.max_abs:.2e}, "
                   f"max rel {c.max_rel:.2e} (tolerance {tolerance:g})")


@cli.command(name="inspect")
@click.argument("model", type=click.Path())
@_shape_option("input shape when the model's is dynamic (default: the one recorded at export)")
@_json_option("the report")
def inspect_cmd(model, input_shape, as_json):
    """Per-layer shapes, parameters, MACs and activation memory of an ONNX model."""
    from .inspect import format_report, inspect_model

    report = inspect_model(model, input_shape)
    if as_json:
        _echo_json(report.to_dict())
    else:
        click.echo(format_report(report))


@cli.command()
@click.argument("model", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="ONNX file to write")
@click.option("--fold/--no-fold", default=True, help="fold BatchNorm into the layer before")
@click.option("--fuse/--no-fuse", default=True, help="fuse Conv+activation for the target")
@click.option("--fc-to-conv", is_flag=True, help="cast fully-connected layers into convolutions")
@click.option("--bottleneck", "bottleneck", default=None,
              help="insert low-rank 1x1 bottlenecks: rank=16, ratio=0.25, energy=0.95 or macs=0.5")
@click.option("--bottleneck-layers", default=None, help="with --bottleneck: comma-separated Conv node names to consider")
@click.option("--fp16", is_flag=True, help="float16 weights and compute")
@click.option("--fp16-io", is_flag=True, help="with --fp16: float16 inputs and outputs too")
@click.option("--int8", is_flag=True, help="static int8 quantization (needs --calibration)")
@click.option("--calibration", default=None,
              help="sample data for --int8, --fp16 and --bottleneck: a folder of images, an .npy/.npz file, or 'digits'")
@click.option("--validate", "validate", default=None,
              help="data every pass is judged on: what --calibration takes, or an .npz with 'x' (or one array per "
                   "input name) and optional 'y' labels  [default: the calibration data, else random samples]")
@click.option("--max-accuracy-drop", type=FiniteFloat(min=0, max=100), default=None,
              help="with --int8 and/or --bottleneck: points of accuracy (labelled --validate data) or of top-1 "
                   "agreement with the input model the result may cost; int8 layers go back to float, most harmful "
                   "first, and bottleneck ranks are raised, until it holds  "
                   "[default: 1.0 when --validate is given, else no budget]")
@click.option("--metric", default=None,
              help="the points --max-accuracy-drop is in: top1, accuracy (labels), ctc[:blank=0] (recognisers), "
                   "mask-iou (one-channel maps), detection[:layout=auto,score=0.25,nms=0.45,iou=0.5] (YOLO-style "
                   "heads), or PATH.py:FUNCTION(reference_outputs, candidate_outputs, labels) -> points  "
                   "[default: accuracy with labels, else top-1 agreement]")
@click.option("--int8-exclude", multiple=True,
              help="with --int8: a node name or op type to keep in float (repeatable)")
@click.option("--int8-quantize-tail", is_flag=True,
              help="with --int8: quantize the post-processing tail too (the nodes after the last multi-channel "
                   "convolution or FC layer: a detector's decoding, a final softmax), which stays in float by default")
@click.option("--calibration-method", type=click.Choice(["minmax", "entropy", "percentile"]), default=None,
              help="with --int8: how activation ranges are chosen  [default: minmax]")
@click.option("--target", type=click.Choice(["ort", "tensorrt", "openvino"]), default="ort",
              help="runtime the graph is shaped for (openvino: no ONNX Runtime-only fusions)")
@click.option("--ort-layout", is_flag=True,
              help="bake ONNX Runtime's CPU layout (NCHWc) into the model: full speed without graph "
                   "optimisation at load, but tied to this CPU's vector extensions")
@click.option("--recipe", type=click.Choice(["fast"]), default=None,
              help="fast: fold + a low-rank bottleneck under a measured time budget + int8, the whole result held to "
                   "--max-accuracy-drop (default 1 point) against the input; needs --calibration")
@_shape_option("input shape for verification (default: the one recorded at export)")
@click.option("--tolerance", type=FiniteFloat(min=0), default=1e-4,
              help="max relative deviation (max|diff| / max|reference|) of an exact pass")
@click.option("--max-error", type=FiniteFloat(min=0), default=None,
              help="fail when an approximating pass deviates more than this (relative)  [default: no limit]")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None, help="also write the report as JSON")
@_json_option("the report")
def optimize(model, output, fold, fuse, fc_to_conv, bottleneck, bottleneck_layers, fp16, fp16_io, int8,
             calibration, validate, max_accuracy_drop, metric, int8_exclude, int8_quantize_tail, calibration_method,
             target, ort_layout,
             recipe, input_shape, tolerance, max_error, report_path, as_json):
    """Run verified graph passes over an ONNX model (default: cleanup, fold, fuse)."""
    from .io import check_output_path, model_files
    from .optimize import optimize_model

    if report_path:
        check_output_path(report_path, model_files(model) + [output])
    layers = [n.strip() for n in bottleneck_layers.split(",")] if bottleneck_layers else None
    report = optimize_model(model, output, fold=fold, fuse=fuse, target=target, fc_to_conv=fc_to_conv,
                            bottleneck=bottleneck, bottleneck_layers=layers, fp16=fp16, fp16_io=fp16_io,
                            int8=int8, calibration=calibration, calibration_method=calibration_method,
                            ort_layout=ort_layout, input_shape=input_shape, tolerance=tolerance, max_error=max_error,
                            validate=validate, int8_exclude=int8_exclude, max_accuracy_drop=max_accuracy_drop,
                            metric=metric, int8_quantize_tail=int8_quantize_tail, recipe=recipe, progress=lambda name: click.echo(f"running {name} ...", err=True))
    if report_path:
        _write_report(report_path, json.dumps(report.to_dict(), indent=2) + "\n")
    if as_json:
        _echo_json(report.to_dict())
        return
    click.echo(f"verified on {report.validation_data}; exact passes may move the outputs by {report.exact_limit:.2g} "
               f"(the model's own float32 noise: {report.noise_floor:.2g})")
    for p in report.passes:
        kind = "exact" if p.exact else "approximate"
        click.echo(f"{p.name} ({kind}): nodes {p.nodes_before} -> {p.nodes_after}, params {p.params_before:,} -> "
                   f"{p.params_after:,}, MACs {p.macs_before:,} -> {p.macs_after:,}; deviation vs input: "
                   f"max abs {p.max_abs:.2e}, max rel {p.max_rel:.2e}"
                   + (f" (this pass alone: max rel {p.step_max_rel:.2e})" if p.step_max_rel != p.max_rel else ""))
        if not p.exact and p.top1_agreement is not None:
            click.echo(f"    top-1 agreement with the input model: {p.top1_agreement:.2%}"
                       + (f"; accuracy {p.accuracy_before:.2%} -> {p.accuracy_after:.2%}"
                          if p.accuracy_after is not None else ""))
        if not p.exact and p.validation.get("metric_after") is not None:
            v = p.validation
            click.echo(f"    {v['metric']}: {v['metric_before']:.2f} -> {v['metric_after']:.2f} points")
        for n in p.notes:
            click.echo(f"    {n}")
    if report.recipe:
        r = report.recipe
        drop = "" if r["drop"] is None else f", {r['drop']:.2f} point(s) lost against the input"
        click.echo(f"recipe {r['name']}: bottleneck {r['bottleneck'] or 'left out'} + int8{drop} "
                   f"(budget {r['accuracy_budget']:g})")
        for refused in r["refused"]:
            click.echo(f"    tried first, refused: {refused}")
        if r.get("candidates"):
            click.echo(f"    candidates, judged in the engine that runs them ({r['metric']}) and timed side by side "
                       "at batch 1:")
            click.echo(f"      {'candidate':<16} {'drop':>7} {'latency':>9} {'vs ORT fp32':>11}  verdict")
            for c in r["candidates"]:
                drop = "-" if c["drop"] is None else f"{c['drop']:.2f}"
                ms = "-" if c["latency_ms"] is None else f"{c['latency_ms']:.2f} ms"
                speed = "-" if c["speedup"] is None else f"{c['speedup']:.2f}x"
                click.echo(f"      {c['label']:<16} {drop:>7} {ms:>9} {speed:>11}  {c['verdict']}")
            for name in r.get("not_compared", []):
                click.echo(f"    not compared: {name}")
            providers = "openvino" if r["engine"] == "ov-cpu" else "cpu"
            click.echo(f"    chosen: {r['chosen']}, recorded in the file: Engine({Path(output).name!r}) runs it "
                       f"that way (as Engine(..., providers={providers!r}"
                       + (f", precision={r['precision']!r}" if r["engine"] == "ov-cpu" and r["precision"] != "int8"
                          else "") + "))")
    click.echo(f"wrote {output}")


@cli.command(name="passes")
@_json_option("the passes, one object each")
def passes_cmd(as_json):
    """List every graph pass optimize can run: name, exact or approximating, the option that runs it."""
    from .passes import describe_passes

    rows = describe_passes()
    if as_json:
        _echo_json(rows)
        return
    for r in rows:
        click.echo(f"{r['name']:<11} {'exact' if r['exact'] else 'approximate':<12} {r['option']:<26} {r['summary']}")


@cli.command()
@click.argument("model", type=click.Path())
@click.option("--image-size", type=click.IntRange(1), default=None, help="side of a random square image, in pixels")
@click.option("--image", "image_path", type=click.Path(dir_okay=False), default=None,
              help=".npy file with an (N, C, H, W) or (C, H, W) image instead of a random one")
@click.option("--stride", type=click.IntRange(1), default=None,
              help="map stride in pixels, a divisor of the network's total stride  [default: the network's]")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None, help="write the score map as .npy")
@click.option("--check", is_flag=True, help="also evaluate every crop with the original model and compare")
@_json_option("the result (map shape, top class per cell, timings, check)")
def slide(model, image_size, image_path, stride, output, check, as_json):
    """Slide a classifier over a larger image in one pass (FC->CONV); print the score map."""
    from .io import check_output_path, model_files
    from .slide import slide_image

    if image_path is not None and image_size is not None:
        raise UserInputError("give one of --image FILE.npy and --image-size N, not both")
    if output:
        check_output_path(output, model_files(model) + ([image_path] if image_path else []))
    result = slide_image(model, image=image_path, image_size=image_size, stride=stride, check=check)
    if output:
        import numpy as np

        from .io import atomic_path

        with atomic_path(output, model_files(model)) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, result.scores)
    if as_json:
        _echo_json(result.to_dict())
        return
    n, classes, rows, cols = result.scores.shape
    click.echo(f"score map {n}x{classes}x{rows}x{cols}: {rows}x{cols} crops of {result.window[0]}x{result.window[1]} "
               f"at stride {result.stride} over a {result.image_shape[2]}x{result.image_shape[3]} image, "
               f"{result.seconds * 1e3:.0f} ms ({result.passes} pass(es))")
    for r in range(rows):
        click.echo("  top class per cell: " + " ".join(f"{int(c):>4}" for c in result.top_class[r]))
    if check:
        click.echo(f"crop by crop: {result.crop_seconds * 1e3:.0f} ms; max |map - crops| = "
                   f"{result.max_abs_vs_crops:.3g} ({result.max_abs_vs_crops / result.score_range:.2%} of the score "
                   f"range); top class agrees in {result.cells_agreeing}/{rows * cols} cells")
        if result.padded:
            click.echo("  (the network zero-pads its convolutions: cells see real pixels where a lone crop sees zeros)")


@cli.command()
@click.argument("model", type=click.Path())
@click.option("--backend", type=click.Choice(BUILD_BACKENDS), required=True, help="engine to build for")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="artefact to write (.onnx for ort-*, .plan for trt, .xml + .bin for ov-cpu)")
@click.option("--fp16", is_flag=True, help="allow float16 kernels (TensorRT backends)")
@click.option("--bf16", is_flag=True, help="ov-cpu: bfloat16 kernels, on a CPU with native bf16 (AVX512_BF16 or AMX)")
@click.option("--int8", is_flag=True, help="INT8 (give the QDQ model from 'optimize --int8 --target tensorrt')")
@click.option("--min-shape", multiple=True, callback=_profile_value,
              help="TensorRT profile: minimum input shape, [NAME:]1,3,224,224 (repeatable, one per input)")
@click.option("--opt-shape", multiple=True, callback=_profile_value,
              help="TensorRT profile: optimum input shape, [NAME:]8,3,224,224 (repeatable)")
@click.option("--max-shape", multiple=True, callback=_profile_value,
              help="TensorRT profile: maximum input shape, [NAME:]32,3,224,224 (repeatable)")
@click.option("--workspace", "workspace_mb", type=click.IntRange(1), default=None,
              help="TensorRT workspace limit, in MiB  [default: TensorRT's]")
@click.option("--lean-memory", is_flag=True, help="ort-cpu: weights in a side file that ONNX Runtime maps, not copies")
@_json_option()
def build(model, backend, output, fp16, bf16, int8, min_shape, opt_shape, max_shape, workspace_mb, lean_memory,
          as_json):
    """Build MODEL.onnx into an artefact for a backend (cached: the same inputs reuse the built engine)."""
    from .backends import BuildOptions
    from .backends import build as do_build

    options = BuildOptions(fp16=fp16, bf16=bf16, int8=int8, min_shape=min_shape, opt_shape=opt_shape, max_shape=max_shape,
                           workspace_mb=workspace_mb, lean_memory=lean_memory)
    result = do_build(model, backend, output, options)
    if as_json:
        _echo_json(result.to_dict())
        return
    how = "reused the cached engine" if result.cached else "built"
    precision = result.details.get("precision", options.precision)
    click.echo(f"{how} {result.artefact} for {backend} ({precision}) in {result.seconds:.2f} s, "
               f"{result.size_bytes / 2**20:.1f} MiB; cache key {result.key}")


@cli.command()
@click.argument("model", type=click.Path())
@click.option("--triton", "repo", required=True, type=click.Path(file_okay=False),
              help="Triton model repository folder to write the entry into (created if missing)")
@click.option("--name", default=None, help="model name in the repository  [default: the file's stem]")
@click.option("--version", "version", type=click.IntRange(1), default=1, help="version folder to write")
@click.option("--max-batch-size", type=click.IntRange(0), default=None,
              help="Triton's max_batch_size  [default: 8 with a dynamic batch, else 0]")
@click.option("--dynamic-batching/--no-dynamic-batching", default=True, help="let Triton batch requests together")
@click.option("--preferred-batch-size", "preferred", multiple=True, type=click.IntRange(1),
              help="a batch size the dynamic batcher aims for (repeatable)")
@click.option("--max-queue-delay-us", type=click.IntRange(0), default=None,
              help="how long a request may wait to be batched, in microseconds")
@click.option("--instances", type=click.IntRange(1), default=1, help="model instances (instance_group count)")
@click.option("--kind", type=click.Choice(["cpu", "gpu"]), default=None,
              help="where the instances run  [default: gpu for a .plan, else cpu]")
@click.option("--backend", type=click.Choice(["onnxruntime", "openvino", "tensorrt"]), default=None,
              help="Triton backend that serves the model  [default: tensorrt for a .plan, openvino for an .xml, "
                   "else onnxruntime]")
@click.option("--gpu-accelerator", type=click.Choice(["tensorrt", "tensorrt-fp16"]), default=None,
              help="with --kind gpu, an ONNX model: run it through ONNX Runtime's TensorRT provider")
@click.option("--force", is_flag=True, help="replace an existing entry of the same name")
@_json_option()
def package(model, repo, name, version, max_batch_size, dynamic_batching, preferred, max_queue_delay_us, instances,
            kind, backend, gpu_accelerator, force, as_json):
    """Write MODEL as a Triton Inference Server model-repository entry (config.pbtxt + versioned model)."""
    from .serving import package_triton

    result = package_triton(model, repo, name=name, version=version, max_batch_size=max_batch_size,
                            dynamic_batching=dynamic_batching, preferred_batch_sizes=tuple(preferred),
                            max_queue_delay_us=max_queue_delay_us, instances=instances, kind=kind, backend=backend,
                            gpu_accelerator=gpu_accelerator, force=force)
    if as_json:
        _echo_json(result.to_dict())
        return
    click.echo(f"wrote {result.entry} ({result.platform}, max_batch_size {result.max_batch_size}): "
               f"{result.config.name} and {result.model_file.relative_to(result.entry)}")
    for t in result.inputs + result.outputs:
        kind_ = "input " if t in result.inputs else "output"
        click.echo(f"  {kind_} {t['name']}: {t['data_type']} dims [{', '.join(map(str, t['dims']))}]")


@cli.command()
@click.argument("model", type=click.Path())
@click.option("--name", default=None, help="model name on the server  [default: the file's stem]")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to listen on (0.0.0.0: every interface)")
@click.option("--http-port", type=int, default=8000, show_default=True, help="KServe v2 HTTP/REST port")
@click.option("--grpc-port", type=int, default=8001, show_default=True, help="KServe v2 gRPC port")
@click.option("--metrics-port", type=int, default=8002, show_default=True, help="Prometheus metrics port")
@click.option("--max-batch-size", type=click.IntRange(0), default=None,
              help="largest batch Triton forms  [default: 8 with a dynamic batch, else 0]")
@click.option("--dynamic-batching/--no-dynamic-batching", default=True, help="let Triton batch requests together")
@click.option("--preferred-batch-size", "preferred", multiple=True, type=click.IntRange(1),
              help="a batch size the dynamic batcher aims for (repeatable)")
@click.option("--max-queue-delay-us", type=click.IntRange(0), default=0, show_default=True,
              help="how long a request may wait to be batched, in microseconds")
@click.option("--instances", type=click.IntRange(1), default=1, show_default=True,
              help="model instances, each with its own Engine")
@click.option("--providers", default="cpu", show_default=True,
              help="the Engine's execution providers (as Engine takes them: cpu, cuda, tensorrt, openvino, auto)")
@click.option("--threads", type=click.IntRange(1), default=None, help="intra-op threads per instance")
@click.option("--log-file", type=click.Path(dir_okay=False), default=None,
              help="keep Triton's own log here  [default: a temporary file, kept only when startup fails]")
@click.option("--max-input-mb", type=click.FloatRange(min=0, min_open=True), default=None,
              help="the most one request may send per input, in MiB; larger requests get a 400  [default: the "
                   "input's shape at --max-batch-size, or 64 where a dimension other than the batch is dynamic]")
@_json_option("the endpoints and model signature, one line, once the server is ready")
def serve(model, name, host, http_port, grpc_port, metrics_port, max_batch_size, dynamic_batching, preferred,
          max_queue_delay_us, instances, providers, threads, log_file, max_input_mb, as_json):
    """Serve MODEL on a real Triton Inference Server (PyTriton) until Ctrl-C or SIGTERM."""
    from .serving import Server

    server = Server(model, name=name, host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                    max_batch_size=max_batch_size, dynamic_batching=dynamic_batching, preferred_batch_sizes=preferred,
                    max_queue_delay_us=max_queue_delay_us, instances=instances, providers=providers, threads=threads,
                    log_file=log_file, max_input_mb=max_input_mb)
    click.echo(f"starting Triton Inference Server for {model} ...", err=True)
    _BEFORE_HARD_EXIT.append(server.stop)
    try:
        server.start()
        i = server.info
        if as_json:
            from dataclasses import asdict

            click.echo(json.dumps({**asdict(i), "http_url": i.http_url, "grpc_url": i.grpc_url,
                                   "metrics_url": i.metrics_url}), nl=True)
            sys.stdout.flush()
        batching = (f"dynamic batching up to {i.max_batch_size}"
                    + (f", queue delay {i.max_queue_delay_us} us" if i.max_queue_delay_us else "")
                    + (f", preferred {i.preferred_batch_sizes}" if i.preferred_batch_sizes else "")
                    if i.dynamic_batching else
                    f"batches up to {i.max_batch_size} as sent, no dynamic batching" if i.max_batch_size else
                    "fixed batch, no batching")
        say = (lambda text: click.echo(text, err=True)) if as_json else click.echo
        say(f"serving {i.name} on Triton Inference Server {i.triton_version}: {i.instances} instance(s) of "
            f"deploykit's Engine ({', '.join(i.providers)}), {batching}")
        say(f"  inference  {i.http_url}/v2/models/{i.name}/infer  (gRPC {i.grpc_url})")
        say(f"  ready      {i.http_url}/v2/models/{i.name}/ready")
        say(f"  metadata   {i.http_url}/v2/models/{i.name}")
        say(f"  metrics    {i.metrics_url}")
        sys.stdout.flush()
        click.echo("Ctrl-C or SIGTERM stops it.", err=True)
        server.wait()
        click.echo(f"error: Triton Inference Server stopped by itself: its log is {server.log_file}", err=True)
        sys.exit(1)
    except _Interrupted as exc:
        # A second Ctrl-C (or a SIGTERM forwarded twice) must not cut the shutdown short and orphan Triton.
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)
        click.echo(f"stopping on {signal.Signals(exc.signum).name} ...", err=True)
        server.stop()
        click.echo(f"stopped by {signal.Signals(exc.signum).name}", err=True)
    finally:
        server.stop()
        _BEFORE_HARD_EXIT.remove(server.stop)


@cli.command(name="bench")
@click.argument("models", nargs=-1, required=True)
@click.option("--backend", "backends", multiple=True, type=click.Choice(BENCH_BACKENDS + ("ov-cpu:bf16",)),
              help="repeatable; ov-cpu runs f32 (int8 for a QDQ model), ov-cpu:bf16 bfloat16  "
                   "[default: ort-cpu, plus torch for zoo names; trt for .plan; ov-cpu for .xml]")
@click.option("--batch", "batches", default="1,8", help="comma-separated batch sizes")
@click.option("--warmup", type=click.IntRange(0), default=20, help="untimed runs before measuring, in iterations")
@click.option("--iterations", type=click.IntRange(1), default=None, help="timed runs per measurement (instead of --duration)")
@click.option("--duration", type=FiniteFloat(min=0.1, max=3600), default=None,
              help="seconds of timed runs per measurement  [default: 3]")
@click.option("--threads", type=click.IntRange(1), default=None, help="intra-op threads  [default: the runtime's]")
@click.option("--lean-memory", is_flag=True, help="ONNX Runtime without prepacking or arena, weights mapped from a side file")
@_shape_option("input shape for the dynamic dimensions other than the batch, which --batch sets "
               "(default: the one recorded at export)")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None,
              help="write every figure and raw sample as JSON")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None, help="write a PNG")
@click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False), default=None, help="write a markdown report")
@_json_option("every figure and raw sample")
def bench_cmd(models, backends, batches, warmup, iterations, duration, threads, lean_memory, input_shape,
              report_path, plot_path, markdown_path, as_json):
    """Throughput, latency and memory of MODEL(s) per backend and batch size."""
    from pathlib import Path

    from . import bench as b
    from .io import check_output_path, model_files

    if iterations is not None and duration is not None:
        raise UserInputError("give one of --iterations and --duration, not both")
    try:
        sizes = [int(v) for v in batches.split(",") if v.strip()]
        if not sizes or any(v < 1 for v in sizes):
            raise ValueError
    except ValueError:
        raise UserInputError(f"bad --batch {batches!r}: give positive integers like 1,8,32") from None
    inputs = [f for m in models if Path(m).exists() for f in model_files(m)]
    for p in (report_path, plot_path, markdown_path):
        if p:
            check_output_path(p, inputs)

    def progress(i, n, label):
        # One line per measurement on a terminal, overwritten in place; plain lines in logs.
        done = int(30 * i / n) if n else 30
        text = f"[{'#' * done}{'.' * (30 - done)}] {i}/{n} {label}"
        if sys.stderr.isatty():
            click.echo("\r" + text.ljust(100), nl=i == n, err=True)
        else:
            click.echo(text, err=True)

    report = b.bench(list(models), list(backends) or None, sizes, warmup, iterations, duration, threads,
                     lean_memory, progress=progress, input_shape=input_shape)
    if report_path:
        _write_report(report_path, json.dumps(report.to_dict(), indent=2) + "\n")
    if markdown_path:
        _write_report(markdown_path, b.format_markdown(report))
    if plot_path:
        b.plot(report, Path(plot_path))
    if as_json:
        _echo_json(report.to_dict())
    else:
        click.echo(b.format_table(report))


class _Interrupted(BaseException):
    """Raised by the SIGINT/SIGTERM handler, so that every `finally` (temporary files) runs before exit."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _on_signal(signum, frame):
    raise _Interrupted(signum)


_previous_unraisablehook = sys.unraisablehook
# Run before a hard exit (see _on_unraisable): what must not outlive the process, such as a Triton server.
_BEFORE_HARD_EXIT: list = []


def _on_unraisable(unraisable) -> None:
    """A signal that lands inside a weakref callback, a __del__ or an import lock's cleanup raises
    _Interrupted where Python can only print and drop it, and the command would run on to exit 0. The
    stack cannot be unwound from here, so clean up what the `finally` blocks would have and exit now."""
    if not isinstance(unraisable.exc_value, _Interrupted):
        _previous_unraisablehook(unraisable)
        return
    import os

    from .io import remove_pending

    for cleanup in reversed(_BEFORE_HARD_EXIT):
        try:
            cleanup()
        except Exception:  # noqa: BLE001 - exiting anyway; the remaining cleanups still have to run
            pass
    remove_pending()
    signum = unraisable.exc_value.signum
    click.echo(_interrupted_message(signum), err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(128 + signum)


def _interrupted_message(signum: int) -> str:
    from .io import WRITTEN

    name = signal.Signals(signum).name
    if WRITTEN:
        done = ", ".join(str(p) for p in WRITTEN)
        return f"error: interrupted by {name} after {done} was completely written; the command did not finish"
    return f"error: interrupted by {name}; nothing was written"


def _split_debug(args: list[str]) -> tuple[bool, list[str]]:
    """--debug is accepted anywhere before a '--' separator; click only knows it on the group."""
    end = args.index("--") if "--" in args else len(args)
    debug = "--debug" in args[:end]
    if debug:
        args = ["--debug"] + [a for a in args[:end] if a != "--debug"] + args[end:]
    return debug, args


def main(argv=None) -> None:
    debug, args = _split_debug(list(sys.argv[1:] if argv is None else argv))
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, _on_signal)
    global _previous_unraisablehook
    _previous_unraisablehook, sys.unraisablehook = sys.unraisablehook, _on_unraisable
    try:
        cli.main(args=args, prog_name="deploykit", standalone_mode=False)
    except _Interrupted as exc:
        click.echo(_interrupted_message(exc.signum), err=True)
        sys.exit(128 + exc.signum)
    except click.exceptions.Abort as exc:
        # click turns KeyboardInterrupt and EOFError into Abort; a signal arrives as _Interrupted, so an
        # Abort here is an EOFError from somewhere that should have caught it: a bug, reported as one.
        cause = exc.__context__ or exc
        if debug:
            raise
        click.echo(f"error: internal error {type(cause).__name__}: {_first_line(cause)} "
                   "(rerun with --debug for the traceback)", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        if debug:
            raise
        click.echo(f"error: {exc.format_message()}" + _usage_hint(exc), err=True)
        sys.exit(exc.exit_code)
    except DeploykitError as exc:
        if debug:
            raise
        click.echo(f"error: {_first_line(exc)}", err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:  # an unexpected failure still gets one line, and --debug for the rest
        if debug:
            raise
        from .io import storage_error

        refusal = storage_error(exc) if isinstance(exc, OSError) else None  # a full disk is not a bug
        if refusal is not None:
            click.echo(f"error: {refusal}", err=True)
            sys.exit(refusal.exit_code)
        click.echo(f"error: internal error {type(exc).__name__}: {_first_line(exc)}"
                   " (rerun with --debug for the traceback)", err=True)
        sys.exit(1)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        sys.unraisablehook = _previous_unraisablehook




def _usage_hint(exc) -> str:
    ctx = getattr(exc, "ctx", None)
    return f" (see '{ctx.command_path} --help')" if ctx is not None else ""


if __name__ == "__main__":
    main()
