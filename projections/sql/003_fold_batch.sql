-- scope: public
-- Projection schema, version 3: fold a whole batch in one round trip.
--
-- The function lives in public and names its projection schema in p_schema (dynamic SQL, so
-- nothing is bound to a schema's tables: after a rebuilt schema is renamed to "projection", the
-- next call uses the new tables, with no stale cached plan pointing at the old ones).
--
-- The projector folds a batch in Python from the states it read, then calls this function once
-- with every row as parallel arrays. One statement is one transaction: rows, history, outcomes,
-- anomalies, offsets and notifications commit together or not at all.
--
-- Concurrency guard (replaces SELECT ... FOR UPDATE): each new state carries the version it was
-- folded from (a_prev; 0 for a new assessment). An existing row is updated only if it is still
-- at that version, a new one is inserted only if absent. If any row moved (another projector
-- folded the same records during a rebalance), the function raises serialization_failure, the
-- whole batch rolls back, and the projector re-reads and re-folds it.
CREATE FUNCTION public.fold_batch(
    p_schema text,
    p_notify boolean,
    p_generation bigint,
    p_group text,
    a_prev bigint[], a_id text[], a_state text[], a_version bigint[], a_progress smallint[], a_message text[],
    a_request text[], a_result text[], a_error text[], a_retryable boolean[], a_retry_count integer[],
    a_max_retries integer[], a_cancel text[], a_duration bigint[], a_timeout bigint[], a_created timestamptz[],
    a_updated timestamptz[], a_started timestamptz[], a_finished timestamptz[], a_last_event uuid[],
    e_id text[], e_version bigint[], e_event_id uuid[], e_type text[], e_occurred timestamptz[],
    e_recorded timestamptz[], e_source text[], e_corr text[], e_caus text[], e_payload text[], e_topic text[],
    e_partition integer[], e_offset bigint[],
    o_cmd text[], o_id text[], o_accepted boolean[], o_version bigint[], o_event_id uuid[], o_error_type text[],
    o_error_message text[], o_details text[], o_processed timestamptz[], o_partition integer[], o_offset bigint[],
    o_cmd_offset bigint[],
    x_kind text[], x_id text[], x_version bigint[], x_expected bigint[], x_event_id text[], x_topic text[],
    x_partition integer[], x_offset bigint[], x_detail text[], x_raw bytea[],
    f_topic text[], f_partition integer[], f_next bigint[],
    n_changes text[], n_outcomes text[]
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    moved integer;
    inserted integer;
    current_generation bigint;
    wanted integer := coalesce(array_length(a_id, 1), 0);
BEGIN
    -- Shared with every other fold into p_schema; exclusive only while a rebuilt projection is
    -- swapped in, so a swap never happens in the middle of a batch. A rebuild folds into its own
    -- schema under its own key, so it is not held up by the swap that waits for it.
    PERFORM pg_advisory_xact_lock_shared(hashtext('fold_batch:' || p_schema));
    EXECUTE format('SELECT generation FROM %I.meta', p_schema) INTO current_generation;
    IF p_generation <> current_generation THEN
        RAISE EXCEPTION 'projection %.* was swapped since this projector started (generation % is not %)',
            p_schema, p_generation, current_generation USING ERRCODE = 'AS001';
    END IF;

    EXECUTE format('UPDATE %1$I.assessments AS t SET
        state = u.state, version = u.version, progress = u.progress, message = u.message,
        request_data = u.request::jsonb, result_data = u.result::jsonb, error_message = u.error,
        retryable = u.retryable, retry_count = u.retry_count, max_retries = u.max_retries,
        cancel_reason = u.cancel, duration_ms = u.duration, processing_timeout_ms = u.timeout,
        created_at = u.created, updated_at = u.updated, started_at = u.started, finished_at = u.finished,
        last_event_id = u.last_event
    FROM unnest($1, $2, $3, $4, $5, $6, $7, $8, $9,
                $10, $11, $12, $13, $14, $15, $16,
                $17, $18, $19, $20)
         AS u(prev, id, state, version, progress, message, request, result, error, retryable, retry_count,
              max_retries, cancel, duration, timeout, created, updated, started, finished, last_event)
    WHERE u.prev > 0 AND t.assessment_id = u.id AND t.version = u.prev', p_schema)
        USING a_prev, a_id, a_state, a_version, a_progress, a_message, a_request, a_result, a_error, a_retryable, a_retry_count, a_max_retries, a_cancel, a_duration, a_timeout, a_created, a_updated, a_started, a_finished, a_last_event;
    GET DIAGNOSTICS moved = ROW_COUNT;

    EXECUTE format('INSERT INTO %1$I.assessments (assessment_id, state, version, progress, message, request_data,
        result_data, error_message, retryable, retry_count, max_retries, cancel_reason, duration_ms,
        processing_timeout_ms, created_at, updated_at, started_at, finished_at, last_event_id)
    SELECT u.id, u.state, u.version, u.progress, u.message, u.request::jsonb, u.result::jsonb, u.error,
           u.retryable, u.retry_count, u.max_retries, u.cancel, u.duration, u.timeout, u.created, u.updated,
           u.started, u.finished, u.last_event
    FROM unnest($1, $2, $3, $4, $5, $6, $7, $8, $9,
                $10, $11, $12, $13, $14, $15, $16,
                $17, $18, $19, $20)
         AS u(prev, id, state, version, progress, message, request, result, error, retryable, retry_count,
              max_retries, cancel, duration, timeout, created, updated, started, finished, last_event)
    WHERE u.prev = 0
    ON CONFLICT (assessment_id) DO NOTHING', p_schema)
        USING a_prev, a_id, a_state, a_version, a_progress, a_message, a_request, a_result, a_error, a_retryable, a_retry_count, a_max_retries, a_cancel, a_duration, a_timeout, a_created, a_updated, a_started, a_finished, a_last_event;

    GET DIAGNOSTICS inserted = ROW_COUNT;

    IF moved + inserted <> wanted THEN
        RAISE EXCEPTION 'assessments changed under this batch (a concurrent projector?)'
            USING ERRCODE = 'serialization_failure';
    END IF;

    EXECUTE format('INSERT INTO %1$I.assessment_events (assessment_id, version, event_id, type, occurred_at, recorded_at,
        source, correlation_id, causation_id, payload, kafka_topic, kafka_partition, kafka_offset)
    SELECT u.id, u.version, u.event_id, u.type, u.occurred, u.recorded, u.source, u.corr, u.caus,
           u.payload::jsonb, u.topic, u.part, u.off
    FROM unnest($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,
                $11, $12, $13)
         AS u(id, version, event_id, type, occurred, recorded, source, corr, caus, payload, topic, part, off)
    ON CONFLICT DO NOTHING', p_schema)
        USING e_id, e_version, e_event_id, e_type, e_occurred, e_recorded, e_source, e_corr, e_caus, e_payload, e_topic, e_partition, e_offset;

    EXECUTE format('INSERT INTO %1$I.command_outcomes (command_id, assessment_id, accepted, version, event_id, error_type,
        error_message, error_details, processed_at, kafka_partition, kafka_offset, command_offset)
    SELECT u.cmd, u.id, u.accepted, u.version, u.event_id, u.error_type, u.error_message, u.details::jsonb,
           u.processed, u.part, u.off, u.cmd_off
    FROM unnest($1, $2, $3, $4, $5, $6, $7, $8,
                $9, $10, $11, $12)
         AS u(cmd, id, accepted, version, event_id, error_type, error_message, details, processed, part, off, cmd_off)
    ON CONFLICT (command_id) DO NOTHING', p_schema)
        USING o_cmd, o_id, o_accepted, o_version, o_event_id, o_error_type, o_error_message, o_details, o_processed, o_partition, o_offset, o_cmd_offset;

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
