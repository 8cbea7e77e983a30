"""Assembles the command groups on the root application and maps a usage error to its exit code."""

from __future__ import annotations


# The modules below register their commands on the root application when imported.
from . import _assessments, _dashboard, _demo, _lag, _services  # noqa: F401  (imported for their commands)
from ._bridge import bridge_app, import_
from ._events import events_app
from ._flags import flags_app
from ._migrate import migrate_app
from ._root import app, run_app
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
    run_app()


