-- scope: projection
-- Projection schema, version 2: what became of each command, folded from assessments.outcomes.
-- Clients wait on these rows (NOTIFY assessment_store_outcomes) to learn whether their command
-- was accepted, and the HTTP API answers a re-sent command id from here.
CREATE TABLE projection.command_outcomes (
    command_id      text PRIMARY KEY,
    assessment_id   text NOT NULL,
    accepted        boolean NOT NULL,
    version         bigint,
    event_id        uuid,
    error_type      text,
    error_message   text,
    error_details   jsonb,
    processed_at    timestamptz NOT NULL,
    kafka_partition integer NOT NULL,
    kafka_offset    bigint NOT NULL,
    command_offset  bigint NOT NULL
);
CREATE INDEX command_outcomes_assessment_idx ON projection.command_outcomes (assessment_id);
