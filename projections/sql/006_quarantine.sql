-- scope: projection
-- Schema version 6: assessments the projector could not fold because PostgreSQL refused a value
-- of one of their records (a NUL in a text, a number out of a column's range: SQLSTATE class 22,
-- a CHECK). One poisoned record must never block the others: the projector puts its assessment
-- here, holds every later record of it (quarantine_held, in log order, not applied) and keeps
-- folding everything else, advancing its offsets. `assessment-store quarantine refold ID`
-- re-applies the held records in order after a fix. In the projection scope: a rebuild meets
-- the same records and quarantines the same assessments in its own schema.
CREATE TABLE projection.quarantine (
    assessment_id     text PRIMARY KEY,          -- NUL and invalid text replaced by U+FFFD
    reason            text NOT NULL,             -- PostgreSQL's error text
    sqlstate          text,
    kafka_topic       text NOT NULL,             -- where the first refused record sits
    kafka_partition   integer NOT NULL,
    kafka_offset      bigint NOT NULL,
    raw_value         bytea,                     -- the refused record's bytes, as on the topic
    quarantined_at    timestamptz NOT NULL DEFAULT now(),
    refold_attempts   integer NOT NULL DEFAULT 0,
    last_refold_at    timestamptz,
    last_refold_error text
);

-- Every record of a quarantined assessment, the refused one first, kept as it was on the topic
-- (value and headers) so a re-fold decodes and folds exactly what the log holds.
CREATE TABLE projection.quarantine_held (
    assessment_id   text NOT NULL REFERENCES projection.quarantine (assessment_id) ON DELETE CASCADE,
    kafka_topic     text NOT NULL,
    kafka_partition integer NOT NULL,
    kafka_offset    bigint NOT NULL,
    raw_key         bytea,
    raw_value       bytea,
    header_keys     text[] NOT NULL,
    header_values   bytea[] NOT NULL,
    timestamp_ms    bigint NOT NULL,
    held_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (assessment_id, kafka_topic, kafka_partition, kafka_offset)
);
