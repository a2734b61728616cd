"""`deploykit passes`: every graph pass optimize can run, from the pass registry."""

from __future__ import annotations

import click

from ..common import cli, echo_json, json_option


@cli.command(name="passes")
@json_option("the passes, one object each")
def passes_cmd(as_json):
    """List every graph pass optimize can run: name, exact or approximating, the option that runs it."""
    from ...passes import describe_passes

    rows = describe_passes()
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        click.echo(f"{r['name']:<11} {'exact' if r['exact'] else 'approximate':<12} {r['option']:<26} {r['summary']}")
