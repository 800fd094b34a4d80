"""The one base of the errors a user can cause and fix from the message alone (a config, an input
file, a model, a prompt, a setting): each stage's main catches UserError (and OSError) and
prints the message, exit code 1, instead of a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """An error whose message names the file, key or value at fault and what was expected."""


def suggest(name: str, known: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the known name closest to a wrong one, else ''."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
