"""What the verbs share: the command group, option types and groups, JSON and report output."""

from __future__ import annotations

import json
import math

import click

from ..errors import UserInputError

class FiniteFloat(click.FloatRange):
    """A float range that also refuses nan and inf: `--tolerance nan` would switch a check off."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


def shape_value(ctx, param, value):
    """click callback: parse a shape option, reporting a bad one as click's own usage error."""
    if value is None:
        return None
    from ..shapes import parse_shape

    try:
        return parse_shape(value)
    except UserInputError as exc:
        raise click.BadParameter(str(exc)) from None


def named_shapes_value(ctx, param, values):
    """click callback: repeated --input-shape [NAME:]1,3,224,224 -> {name or None: shape} (None when absent)."""
    from ..signature import parse_shape_options

    try:
        return parse_shape_options(values)
    except UserInputError as exc:
        raise click.BadParameter(str(exc)) from None


def profile_value(ctx, param, values):
    """--min/opt/max-shape: a bare shape (the first input) or NAME:SHAPE pairs, as BuildOptions takes them."""
    shapes = named_shapes_value(ctx, param, values)
    if not shapes:
        return None
    if None in shapes:
        return shapes[None]
    return tuple(sorted(shapes.items()))


def shape_option(help_text="input shape, e.g. 1,3,224,224"):
    return click.option("--input-shape", "input_shape", multiple=True, callback=named_shapes_value,
                        help=help_text + "; NAME:1,3,224,224 for one input of several (repeatable)")


def json_option(what="the result"):
    return click.option("--json", "as_json", is_flag=True, help=f"print {what} as one JSON document on stdout")


def echo_json(data) -> None:
    click.echo(json.dumps(data, indent=2))


def echo_rows(rows: list[dict], as_json: bool, line, header: str | None = None) -> None:
    """A listing verb's output: the rows as one JSON document, or a header and `line(row)` for each row."""
    if as_json:
        echo_json(rows)
        return
    if header:
        click.echo(header)
    for row in rows:
        click.echo(line(row))


def write_report(path, text: str, inputs=()) -> None:
    from ..storage import atomic_path

    with atomic_path(path, inputs) as tmp:
        tmp.write_text(text)



@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--debug", is_flag=True, help="show the Python traceback of any error (allowed anywhere on the line)")
@click.version_option(package_name="deploykit")
@click.pass_context
def cli(ctx, debug):
    """Take a trained PyTorch CNN to a fast, verified inference artefact."""
    from ..errors import OPTION_SPELLING

    # Messages from the layers below name options as flags for the length of this command, keywords otherwise.
    token = OPTION_SPELLING.set("cli")
    ctx.call_on_close(lambda: OPTION_SPELLING.reset(token))

