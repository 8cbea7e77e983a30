-- scope: public
-- Tables outside the projection: they survive a rebuild and swap of the projection.

-- Every migration operation leaves a row here (export, batch, rollout step, rollback, cleanup).
CREATE TABLE public.migration_audit (
    id           bigserial PRIMARY KEY,
    operation    text NOT NULL,
    actor        text NOT NULL,
    details      jsonb NOT NULL DEFAULT '{}'::jsonb,
    occurred_at  timestamptz NOT NULL DEFAULT now()
);
