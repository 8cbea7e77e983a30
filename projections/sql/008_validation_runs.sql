-- scope: public
-- Schema version 8: every run of `assessment-store migrate validate` (assessment_store.migration), so a
-- later step (a cut-over, a flag change) can require a recent passing validation. In "public", beside
-- migration_audit: a projection rebuild replaces the projection schema and must not forget these.
CREATE TABLE public.migration_validations (
    id              bigserial PRIMARY KEY,
    kind            text NOT NULL CHECK (kind IN ('after', 'before')),  -- legacy vs store, legacy vs an export
    verdict         text NOT NULL CHECK (verdict IN ('pass', 'fail')),
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz NOT NULL,
    legacy_source   text NOT NULL,                 -- the legacy service's URL (or the export file)
    id_prefix       text NOT NULL DEFAULT '',      -- '' = every assessment
    buckets         integer NOT NULL,
    legacy_count    bigint NOT NULL,
    store_count     bigint NOT NULL,
    totals          jsonb NOT NULL,                -- finding kind -> how many
    summary         jsonb NOT NULL                 -- the run's figures (buckets compared, rows fetched, ...)
);
CREATE INDEX migration_validations_kind_idx ON public.migration_validations (kind, finished_at DESC);
