"""Every error a user can cause derives from errors.UserError, the one type each stage's main
turns into its message and exit code 1 (a new error class without it would end in a traceback)."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pkgutil

import nanogptx
from nanogptx.errors import UserError

# Raised and caught inside download's transport: never reach a user.
INTERNAL = {"nanogptx.transport.Transient", "nanogptx.download._Cancelled"}
# Modules of an optional extra, and the package each needs: checked where it is installed.
EXTRAS = {"harness": "lm_eval"}


def test_every_error_class_is_a_user_error() -> None:
    found = []
    for info in pkgutil.iter_modules(nanogptx.__path__):
        if info.name in EXTRAS and importlib.util.find_spec(EXTRAS[info.name]) is None:
            continue
        module = importlib.import_module(f"nanogptx.{info.name}")
        for name, cls in vars(module).items():
            if (
                inspect.isclass(cls)
                and issubclass(cls, Exception)
                and cls.__module__ == module.__name__
            ):
                found.append(f"{module.__name__}.{name}")
                if found[-1] not in INTERNAL:
                    assert issubclass(cls, UserError), found[-1]
    assert len(found) >= 20 and INTERNAL <= set(found)
