"""The project's error base and the one way to put an error in one line (logs, manifest records, exits).

Every error a user can act on (a config value, an input list, a checkpoint, weights, a full disk, a launch,
a device this machine lacks) derives from `PipelineError`: the commands print it as one line and exit with
status 2. Anything else that escapes is a bug of ours: its traceback, status 3.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

EXIT_USER_ERROR = 2  # a PipelineError (or a missing / unreadable file): one line
EXIT_BUG = 3  # anything else: the traceback


class PipelineError(Exception):
    """Base of every error a user can act on; its message is one line that names what to change."""


# Errors a user can act on: ours, and the file system's own for a path they gave.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (PipelineError, FileNotFoundError, PermissionError)


def describe_error(error: BaseException, *, with_class: bool = True) -> str:
    """The error's class and the first line of its message (`ValueError: bad frame 4`).

    `with_class=False`: the message's first line alone (the class name when the message is empty).
    """
    text = str(error).strip()
    line = text.splitlines()[0] if text else ""
    if not with_class:
        return line or type(error).__name__
    return f"{type(error).__name__}: {line}" if line else type(error).__name__


def exit_status(main: Callable[[], int], prog: str, log: logging.Logger | None = None) -> int:
    """Run a command's `main`; an expected error becomes one line on stderr and EXIT_USER_ERROR, anything
    else its traceback and EXIT_BUG. The benchmark, the GPU check and the other tools share this rule."""
    try:
        return main()
    except BrokenPipeError:  # the reader of our output went away (`... | head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except EXPECTED_ERRORS as error:
        print(f"{prog}: {describe_error(error)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as error:  # a bug of ours: the traceback, then the one line
        (log or logging.getLogger(prog)).exception("internal error (please report it with this traceback)")
        print(f"{prog}: internal error: {describe_error(error)}", file=sys.stderr)
        return EXIT_BUG


__all__ = ["EXIT_BUG", "EXIT_USER_ERROR", "EXPECTED_ERRORS", "PipelineError", "describe_error", "exit_status"]
