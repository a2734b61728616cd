"""Refusing an allocation the machine cannot make, before making it.

A shape the user gives (or a model declares) turns into arrays of that size: sample inputs, an
image to slide over, the dummy input of an export, a benchmark batch. An absurd one used to end in
numpy's or the allocator's MemoryError (`Unable to allocate 21.3 PiB`) deep inside a verb. Each
place that allocates from a shape asks here first, and the user gets one line naming the shape.
"""

from __future__ import annotations

import math
import os

import numpy as np

from .errors import UserInputError

# ONNX dimensions are int64; past this a shape is not one any runtime takes.
MAX_DIM = 2**31 - 1


def proc_kib_field(path: str, key: str) -> int | None:
    """Bytes of a "Key:   N kB" line of a /proc file (meminfo, self/status), or None where it has none."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def available_bytes() -> int:
    """Memory the kernel could give this process now (MemAvailable), or the physical size where unknown."""
    found = proc_kib_field("/proc/meminfo", "MemAvailable")
    if found is not None:
        return found
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} EiB"


def check_allocation(shape, dtype, what: str, fix: str, copies: float = 1.0) -> None:
    """Raise UserInputError when `copies` arrays of `shape` and `dtype` would not fit in the memory free now.

    `what` names the array ("the sample input 'x'"), `fix` says what to change ("give a smaller --batch")."""
    dims = [int(d) for d in shape]
    if any(d > MAX_DIM for d in dims):
        raise UserInputError(f"{what} has a dimension of {max(dims):,}, beyond any runtime's {MAX_DIM:,}: {fix}")
    needed = math.prod(dims) * np.dtype(dtype).itemsize * copies
    free = available_bytes()
    if needed > free:
        shape_text = "x".join(map(str, dims)) or "a scalar"
        raise UserInputError(f"{what} of shape {shape_text} needs {human_bytes(needed)} of memory and this machine "
                             f"has {human_bytes(free)} free: {fix}")
