"""`deploykit zoo`: the reference models."""

from __future__ import annotations

import click

from ..common import cli, echo_json, json_option


@cli.command()
@json_option("the zoo")
def zoo(as_json):
    """List the reference models with their input shape, parameters and MACs."""
    from ...zoo import describe_zoo

    rows = describe_zoo()
    if as_json:
        echo_json(rows)
        return
    click.echo(f"{'name':<12} {'input':<14} {'params':>13} {'MACs':>16}  description")
    for r in rows:
        shape = "x".join(map(str, r["input_shape"]))
        click.echo(f"{r['name']:<12} {shape:<14} {r['params']:>13,} {r['macs']:>16,}  {r['description']}")
