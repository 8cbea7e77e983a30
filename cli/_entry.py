"""The console script's entry point: it loads the command line only when called, so that a base
install (the client alone) gets a one-line answer instead of a traceback."""

from __future__ import annotations

import sys

__all__ = ["main"]

_CLI_PACKAGES = {"typer", "rich", "click", "fastapi", "starlette", "uvicorn", "httpx", "cryptography"}
"""Third-party packages the command line needs beyond the base install (the ``cli`` extra)."""
_SERVICES = frozenset({"processor", "projector"})
"""Commands that start with their own module only: a restart's time counts every import (the
whole command line, with the client, migration and bridge packages, took about a second)."""


def main() -> None:
    """Run ``assessment-store``."""
    try:
        if sys.argv[1:2] and sys.argv[1] in _SERVICES:
            from . import _services  # noqa: F401  (registers the service commands on the root application)
            from ._root import run_app as run
        else:
            from ._main import main as run
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in _CLI_PACKAGES:
            raise
        sys.stderr.write(f"error: the command line needs the package {e.name!r}, which the base install leaves "
                         "out; install it with: pip install 'assessment-store[cli]'\n")
        raise SystemExit(69) from None  # EX_UNAVAILABLE, as cli/_console.py documents
    run()
