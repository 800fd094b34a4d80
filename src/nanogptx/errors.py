"""The one base of the errors a user can cause and fix from the message alone (a config, an input
file, a model, a prompt, a setting): each stage's main catches UserError (and OSError) and
prints the message, exit code 1, instead of a traceback."""

from __future__ import annotations

import contextlib
import difflib
import os
import sys
from collections.abc import Iterable, Iterator


class UserError(Exception):
    """An error whose message names the file, key or value at fault and what was expected."""


def suggest(name: str, known: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the known name closest to a wrong one, else ''."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


@contextlib.contextmanager
def reader_may_stop() -> Iterator[None]:
    """Printing into a reader that stops early (`| head`) ends quietly with exit code 1, as
    Python's documentation of SIGPIPE says, instead of a BrokenPipeError traceback."""
    try:
        yield
        sys.stdout.flush()  # here, not at exit, where the error would escape
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
