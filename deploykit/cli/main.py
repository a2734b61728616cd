"""The `deploykit` program: run one verb, turn every error into one line and an exit code, and leave no
partial file behind on SIGINT/SIGTERM. `--debug` (anywhere on the command line) shows the traceback instead."""

from __future__ import annotations

import signal
import sys

import click

from ..errors import DeploykitError
from ..errors import first_line as _first_line
from .common import cli


class Interrupted(BaseException):
    """Raised by the SIGINT/SIGTERM handler, so that every `finally` (temporary files) runs before exit."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _on_signal(signum, frame):
    raise Interrupted(signum)


_previous_unraisablehook = sys.unraisablehook
# Run before a hard exit (see _on_unraisable): what must not outlive the process, such as a Triton server.
BEFORE_HARD_EXIT: list = []


def _on_unraisable(unraisable) -> None:
    """A signal that lands inside a weakref callback, a __del__ or an import lock's cleanup raises
    Interrupted where Python can only print and drop it, and the command would run on to exit 0. The
    stack cannot be unwound from here, so clean up what the `finally` blocks would have and exit now."""
    if not isinstance(unraisable.exc_value, Interrupted):
        _previous_unraisablehook(unraisable)
        return
    import os

    from ..storage import remove_pending

    for cleanup in reversed(BEFORE_HARD_EXIT):
        try:
            cleanup()
        except Exception:  # noqa: BLE001 - exiting anyway; the remaining cleanups still have to run
            pass
    remove_pending()
    signum = unraisable.exc_value.signum
    click.echo(interrupted_message(signum), err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(128 + signum)


def interrupted_message(signum: int) -> str:
    from ..storage import WRITTEN

    name = signal.Signals(signum).name
    if WRITTEN:
        done = ", ".join(str(p) for p in WRITTEN)
        return f"error: interrupted by {name} after {done} was completely written; the command did not finish"
    return f"error: interrupted by {name}; nothing was written"


def _split_debug(args: list[str]) -> tuple[bool, list[str]]:
    """--debug is accepted anywhere before a '--' separator; click only knows it on the group."""
    end = args.index("--") if "--" in args else len(args)
    debug = "--debug" in args[:end]
    if debug:
        args = ["--debug"] + [a for a in args[:end] if a != "--debug"] + args[end:]
    return debug, args


def main(argv=None) -> None:
    debug, args = _split_debug(list(sys.argv[1:] if argv is None else argv))
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, _on_signal)
    global _previous_unraisablehook
    _previous_unraisablehook, sys.unraisablehook = sys.unraisablehook, _on_unraisable
    try:
        cli.main(args=args, prog_name="deploykit", standalone_mode=False)
    except Interrupted as exc:
        click.echo(interrupted_message(exc.signum), err=True)
        sys.exit(128 + exc.signum)
    except click.exceptions.Abort as exc:
        # click turns KeyboardInterrupt and EOFError into Abort; a signal arrives as Interrupted, so an
        # Abort here is an EOFError from somewhere that should have caught it: a bug, reported as one.
        cause = exc.__context__ or exc
        if debug:
            raise
        click.echo(f"error: internal error {type(cause).__name__}: {_first_line(cause)} "
                   "(rerun with --debug for the traceback)", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        if debug:
            raise
        click.echo(f"error: {exc.format_message()}" + _usage_hint(exc), err=True)
        sys.exit(exc.exit_code)
    except DeploykitError as exc:
        if debug:
            raise
        click.echo(f"error: {_first_line(exc)}", err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:  # an unexpected failure still gets one line, and --debug for the rest
        if debug:
            raise
        from ..storage import storage_error

        refusal = storage_error(exc) if isinstance(exc, OSError) else None  # a full disk is not a bug
        if refusal is not None:
            click.echo(f"error: {refusal}", err=True)
            sys.exit(refusal.exit_code)
        click.echo(f"error: internal error {type(exc).__name__}: {_first_line(exc)}"
                   " (rerun with --debug for the traceback)", err=True)
        sys.exit(1)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        sys.unraisablehook = _previous_unraisablehook




def _usage_hint(exc) -> str:
    ctx = getattr(exc, "ctx", None)
    return f" (see '{ctx.command_path} --help')" if ctx is not None else ""
