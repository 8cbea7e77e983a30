"""Assembles the command groups on the root application and maps a usage error to its exit code."""

from __future__ import annotations


# The modules below register their commands on the root application when imported.
from . import _assessments, _dashboard, _demo, _lag, _services  # noqa: F401  (imported for their commands)
from ._bridge import bridge_app, import_
from ._console import EXIT_USAGE
from ._events import events_app
from ._flags import flags_app
from ._migrate import migrate_app
from ._root import app
from ._stack import stack_app

__all__ = ["app", "main"]

app.add_typer(stack_app, name="stack")
app.add_typer(bridge_app, name="bridge")
app.add_typer(flags_app, name="flags")
app.add_typer(migrate_app, name="migrate")
app.add_typer(events_app, name="events")
# The same command as `bridge import`, under the name a migration runbook uses.
app.command("import-legacy", help="Import a legacy JSON Lines export (same as `bridge import`).")(import_)


def main() -> None:
    try:
        app()
    except SystemExit as e:
        # Click prints a usage error and exits with status 2. None of the store's own exit codes is 2,
        # so a 2 here is always click's usage error: it leaves as EX_USAGE, distinct from every failure.
        if e.code == 2:
            raise SystemExit(EXIT_USAGE) from None
        raise


