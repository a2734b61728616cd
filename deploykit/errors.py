"""The errors a deploykit user can see, and the exit code each maps to on the command line.

Every error carries a message that fits on one line and says what was wrong and what to do.
"""

import contextvars

# How option names are spelled in messages: "python" (keyword names, what deploykit's functions take) or "cli"
# (flags, set by deploykit's command line for the duration of a command).
OPTION_SPELLING = contextvars.ContextVar("deploykit_option_spelling", default="python")


def option(name: str) -> str:
    """An option named the way the caller gave it: `--int8-exclude` on the command line, `int8_exclude` from Python."""
    name = name.lstrip("-")
    return f"--{name}" if OPTION_SPELLING.get() == "cli" else name.replace("-", "_")


class DeploykitError(Exception):
    """Base class: anything deploykit raises on purpose."""

    exit_code = 1


class UserInputError(DeploykitError, ValueError):
    """A file, name, shape or option the user gave cannot be used."""

    exit_code = 2


class ShapeMismatchError(UserInputError):
    """An input tensor does not match what the model declares."""


class VerificationError(DeploykitError):
    """A converted model does not compute what its source computes, within tolerance."""

    exit_code = 3


class BackendUnavailableError(DeploykitError):
    """A runtime, execution provider or package asked for is not available here."""

    exit_code = 4


class BudgetNotHeld(VerificationError):
    """The finished pipeline's result fails the caller's acceptance check; nothing was written. `report` is
    the deploykit.optimize.OptimizeReport of the result that was refused."""

    def __init__(self, message: str, report):
        super().__init__(message)
        self.report = report


class UnreachableBudget(UserInputError):
    """A macs=/time= bottleneck budget the factorisable layers cannot reach; `reachable` is the nearest spec that
    can be."""

    def __init__(self, message: str, reachable: str):
        super().__init__(message)
        self.reachable = reachable


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none): errors stay one line."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
