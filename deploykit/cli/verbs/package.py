"""`deploykit package`: a Triton model repository entry (deploykit.package_triton)."""

from __future__ import annotations

import click

from ..common import cli, echo_json, json_option


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
@json_option()
def package(model, repo, name, version, max_batch_size, dynamic_batching, preferred, max_queue_delay_us, instances,
            kind, backend, gpu_accelerator, force, as_json):
    """Write MODEL as a Triton Inference Server model-repository entry (config.pbtxt + versioned model)."""
    from ...serving import package_triton

    result = package_triton(model, repo, name=name, version=version, max_batch_size=max_batch_size,
                            dynamic_batching=dynamic_batching, preferred_batch_sizes=tuple(preferred),
                            max_queue_delay_us=max_queue_delay_us, instances=instances, kind=kind, backend=backend,
                            gpu_accelerator=gpu_accelerator, force=force)
    if as_json:
        echo_json(result.to_dict())
        return
    click.echo(f"wrote {result.entry} ({result.platform}, max_batch_size {result.max_batch_size}): "
               f"{result.config.name} and {result.model_file.relative_to(result.entry)}")
    for t in result.inputs + result.outputs:
        kind_ = "input " if t in result.inputs else "output"
        click.echo(f"  {kind_} {t['name']}: {t['data_type']} dims [{', '.join(map(str, t['dims']))}]")
