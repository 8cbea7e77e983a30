-- scope: public
-- Projection schema, version 13: the state for the client waiting on a command, and reused event
-- ids as anomalies. Both change fold_batch and fold_staged, which are dropped and created again
-- (their arguments and result change), in this migration's one transaction.
--
-- 1. The client that sent a command waited for its outcome notification, then read the assessment
--    back: one more round trip to PostgreSQL at the end of every write (4 ms at the median, 9-11 ms
--    at the 95th percentile at 500 commands/s on the 2-core reference machine). A client now names
--    a NOTIFY channel of its own in the command's reply-to header; the processor copies it onto the
--    event, and the projector passes it here (s_channel, with the assessment id and "<version>|
--    <command id>" in s_tail). For each, the batch notifies that channel, and only that one, with
--    the assessment's row as PostgreSQL itself renders it (row_to_json of the stored row, after
--    this batch's update) followed by a newline and the tail: exactly what a read would return,
--    jsonb's normal form included, because it is the stored row, in the same transaction. JSON
--    never holds a raw newline, so the first one ends the row; the command id, free-form, is last.
--    Commands nobody waits for (the bridge's, an import's, a backlog drained in bulk) carry no
--    channel and cost nothing here, and no other listener receives these rows.
--
-- 2. The history keeps one row per event id (assessment_events.event_id is UNIQUE). A later event
--    carrying an id already stored (only a writer other than the processor can append one: the
--    processor draws a new id for every event) was applied to the state like any other, and its
--    history row was skipped by ON CONFLICT DO NOTHING without a trace. Now each such event
--    becomes a 'reused_event_id' anomaly naming it (assessment, version, event id, type) and its
--    record (topic, partition, offset: the event stays readable in the log), and both functions
--    return how many they recorded, which the projector counts
--    (assessment_store_projector_anomalies_total{kind="reused_event_id"}). A history row already
--    stored exactly (same assessment, version and event id) is no anomaly: it is the same event
--    stored again. The anomaly does not name the event holding the id (a query of
--    assessment_events by event_id does): whether that one was stored by an earlier batch or
--    earlier in the same one depends on how the log was cut into batches, and a rebuild must
--    record the very rows the live fold did.
--
-- Everything else is as in version 12, statement for statement.

DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc AS p
             WHERE p.pronamespace = 'public'::regnamespace AND p.proname IN ('fold_batch', 'fold_staged')
    LOOP
        EXECUTE format('DROP FUNCTION %s', f);
    END LOOP;
END
$$;

-- The notifications of a folded batch, for both functions below. Called after set_config has put
-- the caller's projection schema first on the path, so "assessments" is that schema's table.
CREATE FUNCTION public.fold_notify(
    n_changes text[], n_outcomes text[], s_channel text[], s_id text[], s_tail text[]
) RETURNS void LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM pg_notify('assessment_store_changes', x) FROM unnest(n_changes) AS x;
    -- Before the outcomes (a transaction's notifications arrive in the order sent): the waiting
    -- client answers from the row and never reads it. Only under 8000 bytes: NOTIFY refuses
    -- more, which would roll the batch back; that client reads the row instead.
    PERFORM pg_notify(r.channel, r.payload)
    FROM (SELECT u.channel, row_to_json(t)::text || E'\n' || u.tail AS payload
          FROM unnest(s_channel, s_id, s_tail) AS u(channel, id, tail)
          JOIN assessments AS t ON t.assessment_id = u.id) AS r
    WHERE octet_length(r.payload) < 8000;
    PERFORM pg_notify('assessment_store_outcomes', x) FROM unnest(n_outcomes) AS x;
END
$$;

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
    n_changes text[], n_outcomes text[],
    s_channel text[], s_id text[], s_tail text[]
) RETURNS integer LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    moved integer;
    inserted integer;
    current_generation bigint;
    reused integer;
    wanted integer := coalesce(array_length(a_id, 1), 0);
BEGIN
    -- Static statements resolve their tables on this path (module header): p_schema's, then
    -- the catalog, and temporary tables last, so no temporary table can stand in for one.
    PERFORM set_config('search_path', format('%I, pg_catalog, pg_temp', p_schema), true);
    -- Shared with every other fold into p_schema; exclusive only while a rebuilt projection is
    -- swapped in, so a swap never happens in the middle of a batch. A rebuild folds into its own
    -- schema under its own key, so it is not held up by the swap that waits for it.
    PERFORM pg_advisory_xact_lock_shared(hashtext('fold_batch:' || p_schema));
    SELECT generation INTO current_generation FROM meta;
    IF p_generation <> current_generation THEN
        RAISE EXCEPTION 'projection %.* was swapped since this projector started (generation % is not %)',
            p_schema, p_generation, current_generation USING ERRCODE = 'AS001';
    END IF;

    UPDATE assessments AS t SET
        state = u.state, version = u.version, progress = u.progress, message = u.message,
        request_data = u.request::jsonb, result_data = u.result::jsonb, error_message = u.error,
        retryable = u.retryable, retry_count = u.retry_count, max_retries = u.max_retries,
        cancel_reason = u.cancel, duration_ms = u.duration, processing_timeout_ms = u.timeout,
        created_at = u.created, updated_at = u.updated, started_at = u.started, finished_at = u.finished,
        last_event_id = u.last_event
    FROM unnest(a_prev, a_id, a_state, a_version, a_progress, a_message, a_request, a_result, a_error,
                a_retryable, a_retry_count, a_max_retries, a_cancel, a_duration, a_timeout, a_created,
                a_updated, a_started, a_finished, a_last_event)
         AS u(prev, id, state, version, progress, message, request, result, error, retryable, retry_count,
              max_retries, cancel, duration, timeout, created, updated, started, finished, last_event)
    WHERE u.prev > 0 AND t.assessment_id = u.id AND t.version = u.prev;
    GET DIAGNOSTICS moved = ROW_COUNT;

    INSERT INTO assessments (assessment_id, state, version, progress, message, request_data,
        result_data, error_message, retryable, retry_count, max_retries, cancel_reason, duration_ms,
        processing_timeout_ms, created_at, updated_at, started_at, finished_at, last_event_id)
    SELECT u.id, u.state, u.version, u.progress, u.message, u.request::jsonb, u.result::jsonb, u.error,
           u.retryable, u.retry_count, u.max_retries, u.cancel, u.duration, u.timeout, u.created, u.updated,
           u.started, u.finished, u.last_event
    FROM unnest(a_prev, a_id, a_state, a_version, a_progress, a_message, a_request, a_result, a_error,
                a_retryable, a_retry_count, a_max_retries, a_cancel, a_duration, a_timeout, a_created,
                a_updated, a_started, a_finished, a_last_event)
         AS u(prev, id, state, version, progress, message, request, result, error, retryable, retry_count,
              max_retries, cancel, duration, timeout, created, updated, started, finished, last_event)
    WHERE u.prev = 0
    ON CONFLICT (assessment_id) DO NOTHING;

    GET DIAGNOSTICS inserted = ROW_COUNT;

    IF moved + inserted <> wanted THEN
        RAISE EXCEPTION 'assessments changed under this batch (a concurrent projector?)'
            USING ERRCODE = 'serialization_failure';
    END IF;

    -- One statement: "already stored exactly" is judged on the snapshot before the insert.
    WITH stored AS (
        INSERT INTO assessment_events (assessment_id, version, event_id, type, occurred_at, recorded_at,
            source, correlation_id, causation_id, payload, kafka_topic, kafka_partition, kafka_offset)
        SELECT u.id, u.version, u.event_id, u.type, u.occurred, u.recorded, u.source, u.corr, u.caus,
               u.payload::jsonb, u.topic, u.part, u.off
        FROM unnest(e_id, e_version, e_event_id, e_type, e_occurred, e_recorded, e_source, e_corr, e_caus,
                    e_payload, e_topic, e_partition, e_offset)
             AS u(id, version, event_id, type, occurred, recorded, source, corr, caus, payload, topic, part, off)
        ON CONFLICT DO NOTHING
        RETURNING assessment_id, version
    ), lost AS (
        INSERT INTO anomalies (kind, assessment_id, version, expected_version, event_id, kafka_topic,
            kafka_partition, kafka_offset, detail, raw_value)
        SELECT 'reused_event_id', u.id, u.version, NULL, u.event_id::text, u.topic, u.part, u.off,
               format('event id %s is already in the history, held by an earlier event; this %s event, version '
                      '%s of %s, was applied to the state without a history row of its own', u.event_id, u.type,
                      u.version, u.id),
               NULL
        FROM unnest(e_id, e_version, e_event_id, e_type, e_topic, e_partition, e_offset)
             AS u(id, version, event_id, type, topic, part, off)
        WHERE NOT EXISTS (SELECT 1 FROM stored AS s WHERE s.assessment_id = u.id AND s.version = u.version)
          AND NOT EXISTS (SELECT 1 FROM assessment_events AS e
                          WHERE e.assessment_id = u.id AND e.version = u.version AND e.event_id = u.event_id)
        RETURNING 1
    )
    SELECT count(*) INTO reused FROM lost;

    INSERT INTO command_outcomes (command_id, assessment_id, accepted, version, event_id, error_type,
        error_message, error_details, processed_at, kafka_partition, kafka_offset, command_offset)
    SELECT u.cmd, u.id, u.accepted, u.version, u.event_id, u.error_type, u.error_message, u.details::jsonb,
           u.processed, u.part, u.off, u.cmd_off
    FROM unnest(o_cmd, o_id, o_accepted, o_version, o_event_id, o_error_type, o_error_message, o_details,
                o_processed, o_partition, o_offset, o_cmd_offset)
         AS u(cmd, id, accepted, version, event_id, error_type, error_message, details, processed, part, off, cmd_off)
    ON CONFLICT (command_id) DO NOTHING;

    INSERT INTO anomalies (kind, assessment_id, version, expected_version, event_id, kafka_topic,
        kafka_partition, kafka_offset, detail, raw_value)
    SELECT * FROM unnest(x_kind, x_id, x_version, x_expected, x_event_id, x_topic, x_partition, x_offset,
                         x_detail, x_raw);

    INSERT INTO projector_offsets (consumer_group, topic, partition, next_offset, updated_at)
    SELECT p_group, u.topic, u.part, u.next, now() FROM unnest(f_topic, f_partition, f_next) AS u(topic, part, next)
    ON CONFLICT (consumer_group, topic, partition) DO UPDATE
        SET next_offset = GREATEST(projector_offsets.next_offset, EXCLUDED.next_offset),
            updated_at = now();

    IF p_notify THEN  -- the live projection only: a rebuild must not wake clients
        PERFORM public.fold_notify(n_changes, n_outcomes, s_channel, s_id, s_tail);
    END IF;
    RETURN reused;
END
$$;

CREATE FUNCTION public.fold_staged(
    p_schema text,
    p_notify boolean,
    p_generation bigint,
    p_group text,
    x_kind text[], x_id text[], x_version bigint[], x_expected bigint[], x_event_id text[], x_topic text[],
    x_partition integer[], x_offset bigint[], x_detail text[], x_raw bytea[],
    f_topic text[], f_partition integer[], f_next bigint[],
    n_changes text[], n_outcomes text[],
    s_channel text[], s_id text[], s_tail text[]
) RETURNS integer LANGUAGE plpgsql
SET enable_hashjoin = off
SET enable_mergejoin = off
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    moved integer;
    inserted integer;
    current_generation bigint;
    reused integer;
    wanted integer;
BEGIN
    -- Static statements resolve their tables on this path (module header): p_schema's, then
    -- the catalog, and temporary tables last, so no temporary table can stand in for one.
    PERFORM set_config('search_path', format('%I, pg_catalog, pg_temp', p_schema), true);
    -- As in fold_batch: shared with every other fold into p_schema, exclusive only during a swap.
    PERFORM pg_advisory_xact_lock_shared(hashtext('fold_batch:' || p_schema));
    SELECT generation INTO current_generation FROM meta;
    IF p_generation <> current_generation THEN
        RAISE EXCEPTION 'projection %.* was swapped since this projector started (generation % is not %)',
            p_schema, p_generation, current_generation USING ERRCODE = 'AS001';
    END IF;

    SELECT count(*) INTO wanted FROM pg_temp.fold_assessments;

    UPDATE assessments AS t SET
        state = u.state, version = u.version, progress = u.progress, message = u.message,
        request_data = u.request::jsonb, result_data = u.result::jsonb, error_message = u.error,
        retryable = u.retryable, retry_count = u.retry_count, max_retries = u.max_retries,
        cancel_reason = u.cancel, duration_ms = u.duration, processing_timeout_ms = u.timeout,
        created_at = u.created, updated_at = u.updated, started_at = u.started, finished_at = u.finished,
        last_event_id = u.last_event
    FROM pg_temp.fold_assessments AS u
    WHERE u.prev > 0 AND t.assessment_id = u.id AND t.version = u.prev;
    GET DIAGNOSTICS moved = ROW_COUNT;

    INSERT INTO assessments (assessment_id, state, version, progress, message, request_data,
        result_data, error_message, retryable, retry_count, max_retries, cancel_reason, duration_ms,
        processing_timeout_ms, created_at, updated_at, started_at, finished_at, last_event_id)
    SELECT u.id, u.state, u.version, u.progress, u.message, u.request::jsonb, u.result::jsonb, u.error,
           u.retryable, u.retry_count, u.max_retries, u.cancel, u.duration, u.timeout, u.created, u.updated,
           u.started, u.finished, u.last_event
    FROM pg_temp.fold_assessments AS u
    WHERE u.prev = 0
    ON CONFLICT (assessment_id) DO NOTHING;
    GET DIAGNOSTICS inserted = ROW_COUNT;

    IF moved + inserted <> wanted THEN
        RAISE EXCEPTION 'assessments changed under this batch (a concurrent projector?)'
            USING ERRCODE = 'serialization_failure';
    END IF;

    -- As in fold_batch: one statement, so "already stored" is what was stored before it.
    WITH stored AS (
        INSERT INTO assessment_events (assessment_id, version, event_id, type, occurred_at, recorded_at,
            source, correlation_id, causation_id, payload, kafka_topic, kafka_partition, kafka_offset)
        SELECT u.id, u.version, u.event_id, u.type, u.occurred, u.recorded, u.source, u.corr, u.caus,
               u.payload::jsonb, u.topic, u.partition, u.offset
        FROM pg_temp.fold_events AS u
        ON CONFLICT DO NOTHING
        RETURNING assessment_id, version
    ), lost AS (
        INSERT INTO anomalies (kind, assessment_id, version, expected_version, event_id, kafka_topic,
            kafka_partition, kafka_offset, detail, raw_value)
        SELECT 'reused_event_id', u.id, u.version, NULL, u.event_id::text, u.topic, u.partition, u.offset,
               format('event id %s is already in the history, held by an earlier event; this %s event, version '
                      '%s of %s, was applied to the state without a history row of its own', u.event_id, u.type,
                      u.version, u.id),
               NULL
        FROM pg_temp.fold_events AS u
        WHERE NOT EXISTS (SELECT 1 FROM stored AS s WHERE s.assessment_id = u.id AND s.version = u.version)
          AND NOT EXISTS (SELECT 1 FROM assessment_events AS e
                          WHERE e.assessment_id = u.id AND e.version = u.version AND e.event_id = u.event_id)
        RETURNING 1
    )
    SELECT count(*) INTO reused FROM lost;

    INSERT INTO command_outcomes (command_id, assessment_id, accepted, version, event_id, error_type,
        error_message, error_details, processed_at, kafka_partition, kafka_offset, command_offset)
    SELECT u.cmd, u.id, u.accepted, u.version, u.event_id, u.error_type, u.error_message, u.details::jsonb,
           u.processed, u.partition, u.offset, u.cmd_offset
    FROM pg_temp.fold_outcomes AS u
    ON CONFLICT (command_id) DO NOTHING;

    INSERT INTO anomalies (kind, assessment_id, version, expected_version, event_id, kafka_topic,
        kafka_partition, kafka_offset, detail, raw_value)
    SELECT * FROM unnest(x_kind, x_id, x_version, x_expected, x_event_id, x_topic, x_partition, x_offset,
                         x_detail, x_raw);

    INSERT INTO projector_offsets (consumer_group, topic, partition, next_offset, updated_at)
    SELECT p_group, u.topic, u.part, u.next, now() FROM unnest(f_topic, f_partition, f_next) AS u(topic, part, next)
    ON CONFLICT (consumer_group, topic, partition) DO UPDATE
        SET next_offset = GREATEST(projector_offsets.next_offset, EXCLUDED.next_offset),
            updated_at = now();

    IF p_notify THEN  -- the live projection only: a rebuild must not wake clients
        PERFORM public.fold_notify(n_changes, n_outcomes, s_channel, s_id, s_tail);
    END IF;
    RETURN reused;
END
$$;
