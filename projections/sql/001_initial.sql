-- scope: projection
-- Projection schema, version 1. Files marked "scope: projection" are also applied, with the schema
-- name substituted, to build the sibling schema a rebuild (assessment-store replay) folds into.
-- The projection's tables live in their own Postgres schema, "projection", so that a rebuild
-- can fill a sibling schema from offset 0 and swap it in with two renames in one transaction.
-- Offsets live beside the rows they produced: they are written in the same transaction.

CREATE SCHEMA IF NOT EXISTS projection;

CREATE TABLE projection.assessments (
    assessment_id          text PRIMARY KEY,
    state                  text NOT NULL CHECK (state IN ('PENDING','PROCESSING','COMPLETED','FAILED','CANCELLED')),
    version                bigint NOT NULL CHECK (version >= 1),
    progress               smallint NOT NULL CHECK (progress BETWEEN 0 AND 100),
    message                text,
    request_data           jsonb,
    result_data            jsonb,
    error_message          text,
    retryable              boolean,
    retry_count            integer NOT NULL DEFAULT 0,
    max_retries            integer,
    cancel_reason          text,
    duration_ms            bigint,
    processing_timeout_ms  bigint,
    created_at             timestamptz NOT NULL,
    updated_at             timestamptz NOT NULL,
    started_at             timestamptz,
    finished_at            timestamptz,
    last_event_id          uuid NOT NULL
);
CREATE INDEX assessments_state_idx ON projection.assessments (state, assessment_id);

-- The audit trail: every applied event, who/what/when, and where it sits in Kafka.
CREATE TABLE projection.assessment_events (
    assessment_id   text NOT NULL,
    version         bigint NOT NULL,
    event_id        uuid NOT NULL UNIQUE,
    type            text NOT NULL,
    occurred_at     timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL,
    source          text NOT NULL,
    correlation_id  text,
    causation_id    text,
    payload         jsonb NOT NULL,
    kafka_topic     text NOT NULL,
    kafka_partition integer NOT NULL,
    kafka_offset    bigint NOT NULL,
    PRIMARY KEY (assessment_id, version)
);

CREATE TABLE projection.projector_offsets (
    consumer_group  text NOT NULL,
    topic           text NOT NULL,
    partition       integer NOT NULL,
    next_offset     bigint NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);

-- Events the projector did not apply, with the reason: duplicates, version gaps, undecodable records.
CREATE TABLE projection.anomalies (
    id               bigserial PRIMARY KEY,
    kind             text NOT NULL,
    assessment_id    text,
    version          bigint,
    expected_version bigint,
    event_id         text,
    kafka_topic      text NOT NULL,
    kafka_partition  integer NOT NULL,
    kafka_offset     bigint NOT NULL,
    detail           text NOT NULL,
    raw_value        bytea,
    recorded_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX anomalies_kind_idx ON projection.anomalies (kind);

-- Bumped by every swap of a rebuilt projection (assessment-store replay): a projector holding
-- plans of the previous tables notices the mismatch in fold_batch and reconnects.
CREATE TABLE projection.meta (
    generation  bigint NOT NULL
);
INSERT INTO projection.meta (generation) VALUES (1);
