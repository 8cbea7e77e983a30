-- scope: public
-- Projection schema, version 11: fold a batch from staging tables filled by binary COPY.
--
-- fold_batch (003) takes every row as parallel arrays. Binding those arrays cost the projector
-- more CPU than folding (the driver encodes and checks them element by element), and unnesting
-- them cost PostgreSQL more than storing the rows. The projector now COPYs (binary) the state,
-- history and outcome rows of a batch into three temporary tables of its own session
-- (pg_temp.fold_assessments, fold_events, fold_outcomes; created when it connects, ON COMMIT
-- DELETE ROWS) and calls this function in the same transaction; the few anomaly and offset rows
-- still come as arrays. Everything else is fold_batch's, statement for statement: the generation
-- check, the version guard with its serialization failure, ON CONFLICT, offsets with GREATEST,
-- notifications; and the whole batch commits or rolls back together (one transaction: the
-- COPYs, this call, any held records and fences, then COMMIT).
--
-- fold_batch stays: a batch PostgreSQL refuses is folded again through it, assessment by
-- assessment in savepoints, to find and quarantine the refused ones.
--
-- Joins on the staging tables: they are never analyzed (temporary, emptied at each commit), so
-- the planner would guess their size; hash and merge joins are off in this function, so an update
-- always probes assessments' primary key row by row, and never scans the whole table.
CREATE FUNCTION public.fold_staged(
    p_schema text,
    p_notify boolean,
    p_generation bigint,
    p_group text,
    x_kind text[], x_id text[], x_version bigint[], x_expected bigint[], x_event_id text[], x_topic text[],
    x_partition integer[], x_offset bigint[], x_detail text[], x_raw bytea[],
    f_topic text[], f_partition integer[], f_next bigint[],
    n_changes text[], n_outcomes text[]
) RETURNS void LANGUAGE plpgsql
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
DECLARE
    moved integer;
    inserted integer;
    current_generation bigint;
    wanted integer;
BEGIN
    -- As in fold_batch: shared with every other fold into p_schema, exclusive only during a swap.
    PERFORM pg_advisory_xact_lock_shared(hashtext('fold_batch:' || p_schema));
    EXECUTE format('SELECT generation FROM %I.meta', p_schema) INTO current_generation;
    IF p_generation <> current_generation THEN
        RAISE EXCEPTION 'projection %.* was swapped since this projector started (generation % is not %)',
            p_schema, p_generation, current_generation USING ERRCODE = 'AS001';
    END IF;

    SELECT count(*) INTO wanted FROM pg_temp.fold_assessments;

    EXECUTE format('UPDATE %1$I.assessments AS t SET
        state = u.state, version = u.version, progress = u.progress, message = u.message,
        request_data = u.request::jsonb, result_data = u.result::jsonb, error_message = u.error,
        retryable = u.retryable, retry_count = u.retry_count, max_retries = u.max_retries,
        cancel_reason = u.cancel, duration_ms = u.duration, processing_timeout_ms = u.timeout,
        created_at = u.created, updated_at = u.updated, started_at = u.started, finished_at = u.finished,
        last_event_id = u.last_event
    FROM pg_temp.fold_assessments AS u
    WHERE u.prev > 0 AND t.assessment_id = u.id AND t.version = u.prev', p_schema);
    GET DIAGNOSTICS moved = ROW_COUNT;

    EXECUTE format('INSERT INTO %1$I.assessments (assessment_id, state, version, progress, message, request_data,
        result_data, error_message, retryable, retry_count, max_retries, cancel_reason, duration_ms,
        processing_timeout_ms, created_at, updated_at, started_at, finished_at, last_event_id)
    SELECT u.id, u.state, u.version, u.progress, u.message, u.request::jsonb, u.result::jsonb, u.error,
           u.retryable, u.retry_count, u.max_retries, u.cancel, u.duration, u.timeout, u.created, u.updated,
           u.started, u.finished, u.last_event
    FROM pg_temp.fold_assessments AS u
    WHERE u.prev = 0
    ON CONFLICT (assessment_id) DO NOTHING', p_schema);
    GET DIAGNOSTICS inserted = ROW_COUNT;

    IF moved + inserted <> wanted THEN
        RAISE EXCEPTION 'assessments changed under this batch (a concurrent projector?)'
            USING ERRCODE = 'serialization_failure';
    END IF;

    EXECUTE format('INSERT INTO %1$I.assessment_events (assessment_id, version, event_id, type, occurred_at, recorded_at,
        source, correlation_id, causation_id, payload, kafka_topic, kafka_partition, kafka_offset)
    SELECT u.id, u.version, u.event_id, u.type, u.occurred, u.recorded, u.source, u.corr, u.caus,
           u.payload::jsonb, u.topic, u.partition, u.offset
    FROM pg_temp.fold_events AS u
    ON CONFLICT DO NOTHING', p_schema);

    EXECUTE format('INSERT INTO %1$I.command_outcomes (command_id, assessment_id, accepted, version, event_id, error_type,
        error_message, error_details, processed_at, kafka_partition, kafka_offset, command_offset)
    SELECT u.cmd, u.id, u.accepted, u.version, u.event_id, u.error_type, u.error_message, u.details::jsonb,
           u.processed, u.partition, u.offset, u.cmd_offset
    FROM pg_temp.fold_outcomes AS u
    ON CONFLICT (command_id) DO NOTHING', p_schema);

    EXECUTE format('INSERT INTO %1$I.anomalies (kind, assessment_id, version, expected_version, event_id, kafka_topic,
        kafka_partition, kafka_offset, detail, raw_value)
    SELECT * FROM unnest($1, $2, $3, $4, $5, $6, $7, $8,
                         $9, $10)', p_schema)
        USING x_kind, x_id, x_version, x_expected, x_event_id, x_topic, x_partition, x_offset, x_detail, x_raw;

    EXECUTE format('INSERT INTO %1$I.projector_offsets (consumer_group, topic, partition, next_offset, updated_at)
    SELECT $1, u.topic, u.part, u.next, now() FROM unnest($2, $3, $4) AS u(topic, part, next)
    ON CONFLICT (consumer_group, topic, partition) DO UPDATE
        SET next_offset = GREATEST(%1$I.projector_offsets.next_offset, EXCLUDED.next_offset),
            updated_at = now()', p_schema)
        USING p_group, f_topic, f_partition, f_next;

    IF p_notify THEN  -- the live projection only: a rebuild must not wake clients
        PERFORM pg_notify('assessment_store_changes', x) FROM unnest(n_changes) AS x;
        PERFORM pg_notify('assessment_store_outcomes', x) FROM unnest(n_outcomes) AS x;
    END IF;
END
$$;
