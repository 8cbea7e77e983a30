-- scope: public
-- Schema version 10: performance baselines recorded by `assessment-store migrate baseline`, so a later run
-- can flag a regression against the latest one (--compare). In "public", beside migration_validations: a
-- projection rebuild replaces the projection schema and must not forget them.
CREATE TABLE public.migration_baselines (
    id                  bigserial PRIMARY KEY,
    recorded_at         timestamptz NOT NULL DEFAULT now(),
    window_start        timestamptz NOT NULL,
    window_end          timestamptz NOT NULL,
    source              text NOT NULL,              -- 'observations' (router windows) or 'projection'
    throughput_per_s    double precision NOT NULL,
    error_rate          double precision,           -- fraction; NULL without calls
    avg_ms              double precision,
    p95_ms              double precision,
    p99_ms              double precision,
    figures             jsonb NOT NULL              -- the whole baseline (every count and rate)
);
CREATE INDEX migration_baselines_recorded_idx ON public.migration_baselines (recorded_at DESC, id DESC);
