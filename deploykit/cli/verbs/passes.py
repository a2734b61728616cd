"""`deploykit passes`: every graph pass optimize can run, from the pass registry."""

from __future__ import annotations

from ..common import cli, echo_rows, json_option


@cli.command(name="passes")
@json_option("the passes, one object each")
def passes_cmd(as_json):
    """List every graph pass optimize can run: name, exact or approximating, the option that runs it."""
    from ...passes import describe_passes

    echo_rows(describe_passes(), as_json, lambda r: f"{r['name']:<11} {'exact' if r['exact'] else 'approximate':<12} "
                                                    f"{r['option']:<26} {r['summary']}")
