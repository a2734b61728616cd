"""`deploykit backends`: every engine deploykit builds for and runs, from the backend registry."""

from __future__ import annotations

from ..common import cli, echo_rows, json_option


@cli.command(name="backends")
@json_option("the backends, one object each")
def backends_cmd(as_json):
    """List every backend: its --backend name, what it is, whether build makes an artefact, Engine's names for it."""
    from ...backends import describe_backends

    def line(r):
        engine = (", ".join(f"providers={n!r}" for n in r["engine_names"]) or
                  ("the built artefact's path" if r["builds"] else "not run by Engine"))
        return f"{r['name']:<9} {'build+bench' if r['builds'] else 'bench only':<12} {r['summary']}  [Engine: {engine}]"

    echo_rows(describe_backends(), as_json, line)
