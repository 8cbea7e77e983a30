-- scope: public
-- Schema version 4: where each legacy snapshot import stands (bridge/_import.py).
-- In "public", beside migration_audit, not in "projection": a projection rebuild replaces that
-- schema from the log, and must not forget how far an import got.
CREATE TABLE public.legacy_import_checkpoints (
    file_sha256     text PRIMARY KEY,          -- the file's identity: a changed file starts over
    path            text NOT NULL,             -- where it was last imported from (informative)
    total_lines     bigint NOT NULL,
    next_line       bigint NOT NULL,           -- 1-based; every line before it is done
    next_offset     bigint NOT NULL,           -- byte offset of next_line, to resume without re-reading
    rejected_bytes  bigint NOT NULL,           -- size of <file>.rejected.jsonl when next_line was reached
    counters        jsonb NOT NULL,            -- cumulative counts of the lines before next_line
    started_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz
);
