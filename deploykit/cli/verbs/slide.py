"""`deploykit slide`: a classifier slid over a larger image in one pass (FC->CONV)."""

from __future__ import annotations

import click

from ...errors import UserInputError
from ..common import cli, echo_json, json_option


@cli.command()
@click.argument("model", type=click.Path())
@click.option("--image-size", type=click.IntRange(1), default=None, help="side of a random square image, in pixels")
@click.option("--image", "image_path", type=click.Path(dir_okay=False), default=None,
              help=".npy file with an (N, C, H, W) or (C, H, W) image instead of a random one")
@click.option("--stride", type=click.IntRange(1), default=None,
              help="map stride in pixels, a divisor of the network's total stride  [default: the network's]")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None, help="write the score map as .npy")
@click.option("--check", is_flag=True, help="also evaluate every crop with the original model and compare")
@json_option("the result (map shape, top class per cell, timings, check)")
def slide(model, image_size, image_path, stride, output, check, as_json):
    """Slide a classifier over a larger image in one pass (FC->CONV); print the score map."""
    from ...storage import check_output_path, model_files
    from ...slide import slide_image

    if image_path is not None and image_size is not None:
        raise UserInputError("give one of --image FILE.npy and --image-size N, not both")
    if output:
        check_output_path(output, model_files(model) + ([image_path] if image_path else []))
    result = slide_image(model, image=image_path, image_size=image_size, stride=stride, check=check)
    if output:
        import numpy as np

        from ...storage import atomic_path

        with atomic_path(output, model_files(model)) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, result.scores)
    if as_json:
        echo_json(result.to_dict())
        return
    n, classes, rows, cols = result.scores.shape
    click.echo(f"score map {n}x{classes}x{rows}x{cols}: {rows}x{cols} crops of {result.window[0]}x{result.window[1]} "
               f"at stride {result.stride} over a {result.image_shape[2]}x{result.image_shape[3]} image, "
               f"{result.seconds * 1e3:.0f} ms ({result.passes} pass(es))")
    for r in range(rows):
        click.echo("  top class per cell: " + " ".join(f"{int(c):>4}" for c in result.top_class[r]))
    if check:
        click.echo(f"crop by crop: {result.crop_seconds * 1e3:.0f} ms; max |map - crops| = "
                   f"{result.max_abs_vs_crops:.3g} ({result.max_abs_vs_crops / result.score_range:.2%} of the score "
                   f"range); top class agrees in {result.cells_agreeing}/{rows * cols} cells")
        if result.padded:
            click.echo("  (the network zero-pads its convolutions: cells see real pixels where a lone crop sees zeros)")
