"""Plots deploykit writes (bench --plot, the recipe's --report): matplotlib without a display, refused in one
line where it is not installed, and PNGs written atomically. A leaf: imports only errors and storage."""

from __future__ import annotations

from pathlib import Path


def pyplot(what: str):
    """matplotlib.pyplot on the Agg backend; `what` names the feature in the error when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from .errors import BackendUnavailableError

        raise BackendUnavailableError(f"{what} needs matplotlib: pip install 'deploykit[plot]'") from None
    return plt


def save_png(fig, path: Path, inputs=()) -> None:
    """`fig` as a PNG at `path`, written atomically (never over one of `inputs`), then closed."""
    from .storage import atomic_path

    with atomic_path(path, inputs) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    import matplotlib.pyplot as plt  # there is a figure, so there is matplotlib

    plt.close(fig)
