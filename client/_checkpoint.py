"""``PositionTable``: a subscriber's position, kept in its own PostgreSQL database *in the same
transaction* as the read-model rows it produced, as the projector keeps ``projector_offsets``.

Why the same transaction: a crash between "rows written" and "position stored" would, with two
transactions, either re-apply events on restart (rows committed, position not) or lose them
(position committed, rows not). Committed together, the rows and the position are both there or
neither is, so a subscriber killed at any point resumes exactly after what its rows contain.
``save`` therefore refuses a connection that is not inside a transaction.

One row per (subscriber, topic, partition): the next offset to read and the processor fence
epoch in force there (``Position``). The table is the service's own; its name is given (an SQL
identifier, optionally schema-qualified, checked before it is quoted into the DDL: every value
travels as a parameter).
"""

from __future__ import annotations

import re
from typing import Any

from assessment_store.core import ValidationError, check_text

from ._position import Position

__all__ = ["PositionTable"]

_IDENT = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def _quoted(name: str) -> str:
    parts = name.split(".")
    if not 1 <= len(parts) <= 2 or not all(_IDENT.fullmatch(p) for p in parts):
        raise ValidationError("table", f"{name!r} is not a lower-case SQL identifier (optionally schema.table)")
    return ".".join(f'"{p}"' for p in parts)


class PositionTable:
    """``await table.create(conn)`` once; ``await table.load(conn)`` at start (None: never saved);
    ``await table.save(conn, position)`` inside the transaction that applies the events."""

    def __init__(self, subscriber: str, table: str = "subscription_positions") -> None:
        check_text("subscriber", subscriber)
        if not subscriber or len(subscriber) > 200:
            raise ValidationError("subscriber", "1 to 200 characters")
        self.subscriber = subscriber
        self.table = _quoted(table)

    async def create(self, conn: Any) -> None:
        """Create the table if it does not exist (an asyncpg connection or pool)."""
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {self.table} ("
            " subscriber text NOT NULL, topic text NOT NULL, partition int NOT NULL,"
            " next_offset bigint NOT NULL CHECK (next_offset >= 0), fence_epoch bigint NOT NULL DEFAULT 0,"
            " updated_at timestamptz NOT NULL DEFAULT now(),"
            " PRIMARY KEY (subscriber, topic, partition))")

    async def load(self, conn: Any, topic: str) -> Position | None:
        """The stored position on ``topic``, or None when this subscriber never saved one."""
        rows = await conn.fetch(
            f"SELECT partition, next_offset, fence_epoch FROM {self.table} WHERE subscriber = $1 AND topic = $2",
            self.subscriber, topic)
        if not rows:
            return None
        return Position.of(topic, {r["partition"]: r["next_offset"] for r in rows},
                           {r["partition"]: r["fence_epoch"] for r in rows})

    async def save(self, conn: Any, position: Position) -> None:
        """Store ``position``; ``conn`` must be an asyncpg connection inside the transaction that
        writes the rows the position covers (see the module docstring)."""
        if not conn.is_in_transaction():
            raise ValidationError("conn", "save the position inside the transaction that applies the events "
                                  "(async with conn.transaction(): ...)")
        offsets, epochs = position.offset_map(), position.epoch_map()
        parts = sorted(offsets)
        await conn.execute(
            f"INSERT INTO {self.table} (subscriber, topic, partition, next_offset, fence_epoch)"
            " SELECT $1, $2, p, o, e FROM unnest($3::int[], $4::bigint[], $5::bigint[]) AS t(p, o, e)"
            " ON CONFLICT (subscriber, topic, partition) DO UPDATE"
            " SET next_offset = EXCLUDED.next_offset, fence_epoch = EXCLUDED.fence_epoch, updated_at = now()",
            self.subscriber, position.topic, parts, [offsets[p] for p in parts], [epochs.get(p, 0) for p in parts])
