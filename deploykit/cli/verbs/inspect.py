"""`deploykit inspect`: per-layer shapes, parameters, MACs and memory of an ONNX model."""

from __future__ import annotations

import click

from ..common import cli, echo_json, json_option, shape_option


@cli.command(name="inspect")
@click.argument("model", type=click.Path())
@shape_option("input shape when the model's is dynamic (default: the one recorded at export)")
@json_option("the report")
def inspect_cmd(model, input_shape, as_json):
    """Per-layer shapes, parameters, MACs and activation memory of an ONNX model."""
    from ...analysis import format_report, inspect_model

    report = inspect_model(model, input_shape)
    if as_json:
        echo_json(report.to_dict())
    else:
        click.echo(format_report(report))
