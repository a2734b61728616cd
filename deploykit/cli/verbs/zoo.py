"""`deploykit zoo`: the reference models."""

from __future__ import annotations

from ..common import cli, echo_rows, json_option


@cli.command()
@json_option("the zoo")
def zoo(as_json):
    """List the reference models with their input shape, parameters and MACs."""
    from ...zoo import describe_zoo

    echo_rows(describe_zoo(), as_json,
              lambda r: f"{r['name']:<12} {'x'.join(map(str, r['input_shape'])):<14} {r['params']:>13,} "
                        f"{r['macs']:>16,}  {r['description']}",
              header=f"{'name':<12} {'input':<14} {'params':>13} {'MACs':>16}  description")
