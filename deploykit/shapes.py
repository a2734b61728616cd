"""Parsing and formatting of tensor shapes given on the command line or recorded in models."""

from __future__ import annotations

from .errors import UserInputError


def parse_shape(text: str) -> tuple[int, ...]:
    """Parse "1,3,224,224" (or "1x3x224x224") into a tuple of positive ints."""
    cleaned = text.strip().replace("x", ",").replace(" ", "")
    parts = [p for p in cleaned.split(",")]
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise UserInputError(
            f"bad shape {text!r}: give comma-separated positive integers, for example 1,3,224,224"
        ) from None
    if not dims or any(d <= 0 for d in dims):
        raise UserInputError(
            f"bad shape {text!r}: every dimension must be a positive integer, for example 1,3,224,224"
        )
    if any(d > 2**31 - 1 for d in dims):
        raise UserInputError(f"bad shape {text!r}: a dimension beyond {2**31 - 1:,} is not one any runtime takes")
    return dims


def format_shape(shape) -> str:
    return "x".join(str(d) for d in shape)
