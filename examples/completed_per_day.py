"""A service that keeps its own read model from the store's log: completed assessments per day.

    python examples/completed_per_day.py                 # catch up, then follow live (Ctrl-C stops)
    python examples/completed_per_day.py --until-caught-up

It subscribes to the events topic (``AssessmentStore.subscribe``), keeps only
``AssessmentCompleted`` events, and for each one, in *one* PostgreSQL transaction, adds 1 to its
day's row and stores the subscription's position (``PositionTable``). At start it loads the
position and resumes exactly after it. Killed at any moment (``kill -9`` included), the day counts
and the position are both committed or both not, so a restart neither loses nor doubles an event.
docs/subscriptions.md walks through it; tests/test_subscriptions.py kills it mid-way and checks.

Its database is its own: ``--dsn`` (default: the store's PostgreSQL, which is handy locally), with
its tables in ``--schema`` (default ``completed_per_day``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re

import asyncpg

from assessment_store import AssessmentStore, PositionTable, Settings

DDL = """
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {schema}.completed_per_day (
    day date PRIMARY KEY,
    completed bigint NOT NULL
);
"""


async def run(dsn: str | None, schema: str, until_caught_up: bool, delay_s: float) -> None:
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", schema):
        raise SystemExit(f"--schema {schema!r}: a lower-case SQL identifier")
    settings = Settings()
    conn = await asyncpg.connect(dsn=dsn or settings.dsn, passfile=str(settings.postgres_passfile))
    try:
        await conn.execute(DDL.format(schema=schema))
        positions = PositionTable("completed-per-day", f"{schema}.positions")
        await positions.create(conn)
        start = await positions.load(conn, settings.events_topic)  # None the first time: from the beginning
        logging.info("starting at %s", start or "the beginning")
        async with AssessmentStore(settings) as store, \
                store.subscribe(from_position=start, types=["AssessmentCompleted"]) as events:
            while True:
                if until_caught_up and events.caught_up:
                    break
                try:
                    async with asyncio.timeout(1.0):
                        rec = await anext(events)
                except TimeoutError:
                    continue  # nothing new: look at caught_up again
                day = rec.event.recorded_at.date()
                # The row and the position commit together (or not at all): see PositionTable.
                async with conn.transaction():
                    await conn.execute(
                        f"INSERT INTO {schema}.completed_per_day (day, completed) VALUES ($1, 1)"
                        " ON CONFLICT (day) DO UPDATE SET completed = completed_per_day.completed + 1", day)
                    await positions.save(conn, rec.position)
                if delay_s:
                    await asyncio.sleep(delay_s)  # only to let the test kill it mid-way
            # Caught up: store where we are, covering the events filtered out after the last completion.
            async with conn.transaction():
                await positions.save(conn, events.position)
            logging.info("caught up at %s", events.position)
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", help="the service's own PostgreSQL (default: the store's)")
    parser.add_argument("--schema", default="completed_per_day")
    parser.add_argument("--until-caught-up", action="store_true", help="exit once the log is read to its end")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="pause after each event (demonstrations)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        asyncio.run(run(args.dsn, args.schema, args.until_caught_up, args.delay_ms / 1000))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
