"""`deploykit bench`: throughput, latency and memory per backend and batch (deploykit.benchmark)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ...errors import UserInputError
from ...backends import BACKENDS as BENCH_BACKENDS
from ..common import FiniteFloat, cli, echo_json, json_option, shape_option, write_report


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
@shape_option("input shape for the dynamic dimensions other than the batch, which --batch sets "
               "(default: the one recorded at export)")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None,
              help="write every figure and raw sample as JSON")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None, help="write a PNG")
@click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False), default=None, help="write a markdown report")
@json_option("every figure and raw sample")
def bench_cmd(models, backends, batches, warmup, iterations, duration, threads, lean_memory, input_shape,
              report_path, plot_path, markdown_path, as_json):
    """Throughput, latency and memory of MODEL(s) per backend and batch size."""
    from ... import bench as b
    from ...storage import check_output_path, model_files

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
        write_report(report_path, json.dumps(report.to_dict(), indent=2) + "\n")
    if markdown_path:
        write_report(markdown_path, b.format_markdown(report))
    if plot_path:
        b.plot(report, Path(plot_path))
    if as_json:
        echo_json(report.to_dict())
    else:
        click.echo(b.format_table(report))
