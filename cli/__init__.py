"""The ``assessment-store`` command line: one home for every command group.

* ``_root``: the application and ``--version``; ``_options``: options shared by the commands;
  ``_console``: output, errors and the exit codes (documented in ``docs/cli.md``);
* ``_assessments``: create, start, progress, complete, fail, cancel, retry, get, wait, history, list;
* ``_services``: processor, projector, serve, replay, quarantine, at;
* ``_stack``: ``stack up|down|status|logs|env|credentials|purge``;
* ``_bridge``: ``bridge …`` and ``import-legacy``; ``_flags``: ``flags …``;
* ``_demo``, ``_migration_demo``: ``demo``;
* ``_main``: assembles them; ``_entry``: the console script, which loads ``_main`` only when run, so
  that importing this package needs nothing beyond the base install.

It stands on top of the house: it imports the façade's client and the role packages' public faces;
nothing imports it. Every command line loads every module here (typer registers the commands), so
the client, the migration package and the bridge are imported inside the commands that use them:
the long-running services start without them (the processor's restart time counts them). ``python -m assessment_store.cli`` is the same as the ``assessment-store`` script.
"""

from ._entry import main

__all__ = ["main"]
