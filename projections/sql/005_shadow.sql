-- scope: public
-- Schema version 5: what shadow comparison found (migration/_shadow.py). One row per observation whose
-- outcome differed between the side that served a call and the side that shadowed it, with both
-- values, so a mismatch can be inspected (and argued about) long after the call. In "public": a
-- projection rebuild must not forget them, they are not derived from the log.
CREATE TABLE public.shadow_mismatches (
    id              bigserial PRIMARY KEY,
    observed_at     timestamptz NOT NULL DEFAULT now(),
    kind            text NOT NULL,            -- mismatch | missing | shadow-error
    operation       text NOT NULL,            -- the router operation: create, start, progress, ..., get, wait
    assessment_id   text NOT NULL,
    primary_side    text NOT NULL,            -- store | legacy: the side that answered the caller
    shadow_side     text NOT NULL,
    differences     text[] NOT NULL,          -- the compared fields that differ (state, progress, ...)
    primary_value   jsonb NOT NULL,           -- what the caller got
    shadow_value    jsonb,                    -- what the other side held at the end of the observation
    reason          text NOT NULL,
    primary_ms      double precision NOT NULL, -- the caller's latency
    observed_ms     double precision NOT NULL  -- from the primary's answer to the verdict
);
CREATE INDEX shadow_mismatches_assessment ON public.shadow_mismatches (assessment_id);
CREATE INDEX shadow_mismatches_observed ON public.shadow_mismatches (observed_at);
