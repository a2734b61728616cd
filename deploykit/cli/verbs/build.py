"""`deploykit build`: an engine artefact for one backend (deploykit.build)."""

from __future__ import annotations

import click

from ...backends import BUILD_BACKENDS
from ..common import cli, echo_json, json_option, profile_value


@cli.command()
@click.argument("model", type=click.Path())
@click.option("--backend", type=click.Choice(BUILD_BACKENDS), required=True, help="engine to build for")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="artefact to write (.onnx for ort-*, .plan for trt, .xml + .bin for ov-cpu)")
@click.option("--fp16", is_flag=True, help="allow float16 kernels (TensorRT backends)")
@click.option("--bf16", is_flag=True, help="ov-cpu: bfloat16 kernels, on a CPU with native bf16 (AVX512_BF16 or AMX)")
@click.option("--int8", is_flag=True, help="INT8 (give the QDQ model from 'optimize --int8 --target tensorrt')")
@click.option("--min-shape", multiple=True, callback=profile_value,
              help="TensorRT profile: minimum input shape, [NAME:]1,3,224,224 (repeatable, one per input)")
@click.option("--opt-shape", multiple=True, callback=profile_value,
              help="TensorRT profile: optimum input shape, [NAME:]8,3,224,224 (repeatable)")
@click.option("--max-shape", multiple=True, callback=profile_value,
              help="TensorRT profile: maximum input shape, [NAME:]32,3,224,224 (repeatable)")
@click.option("--workspace", "workspace_mb", type=click.IntRange(1), default=None,
              help="TensorRT workspace limit, in MiB  [default: TensorRT's]")
@click.option("--lean-memory", is_flag=True, help="ort-cpu: weights in a side file that ONNX Runtime maps, not copies")
@json_option()
def build(model, backend, output, fp16, bf16, int8, min_shape, opt_shape, max_shape, workspace_mb, lean_memory,
          as_json):
    """Build MODEL.onnx into an artefact for a backend (cached: the same inputs reuse the built engine)."""
    from ...backends import BuildOptions
    from ...backends import build as do_build

    options = BuildOptions(fp16=fp16, bf16=bf16, int8=int8, min_shape=min_shape, opt_shape=opt_shape, max_shape=max_shape,
                           workspace_mb=workspace_mb, lean_memory=lean_memory)
    result = do_build(model, backend, output, options)
    if as_json:
        echo_json(result.to_dict())
        return
    how = "reused the cached engine" if result.cached else "built"
    precision = result.details.get("precision", options.precision)
    click.echo(f"{how} {result.artefact} for {backend} ({precision}) in {result.seconds:.2f} s, "
               f"{result.size_bytes / 2**20:.1f} MiB; cache key {result.key}")
