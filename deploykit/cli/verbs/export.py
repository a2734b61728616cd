"""`deploykit export`: a zoo model or checkpoint to a proven ONNX file."""

from __future__ import annotations

import click

from ..common import FiniteFloat, cli, echo_json, json_option, shape_option


@cli.command()
@click.argument("model")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="ONNX file to write")
@click.option("--weights", type=click.Path(dir_okay=False), help="state_dict to load (weights only, never unpickled)")
@shape_option("input shape to export and prove at (default: the zoo model's)")
@click.option("--dynamic-batch/--static-batch", default=True, help="make the batch dimension dynamic")
@click.option("--dynamic-spatial", is_flag=True, help="also make H and W dynamic")
@click.option("--opset", type=click.IntRange(7, 23), default=17,
              help="ONNX opset to write (the dynamo exporter writes 18 or more)")
@click.option("--tolerance", type=FiniteFloat(min=0), default=1e-4,
              help="max relative error allowed against PyTorch (max|diff| / max|reference|)")
@click.option("--exporter", type=click.Choice(["torchscript", "dynamo"]), default="torchscript",
              help="PyTorch exporter (.pt2 archives always use dynamo)")
@json_option()
def export(model, output, weights, input_shape, dynamic_batch, dynamic_spatial, opset, tolerance, exporter, as_json):
    """Export MODEL (zoo name, file.py:factory, or TorchScript/torch.export archive) to ONNX, proven in ONNX Runtime."""
    from ...exporter import export as do_export

    result = do_export(model, output, weights=weights, input_shape=input_shape, dynamic_batch=dynamic_batch,
                       dynamic_spatial=dynamic_spatial, opset=opset, tolerance=tolerance, exporter=exporter)
    if as_json:
        echo_json(result.to_dict())
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
