-- scope: public
-- Schema version 9: the legacy service's own audit log, imported into migration_audit
-- (`assessment-store migrate import-audit`). Each imported row keeps the legacy entry's id, unique, so
-- importing the same export twice adds nothing; the store's own rows have none.
ALTER TABLE public.migration_audit ADD COLUMN legacy_audit_id text;
CREATE UNIQUE INDEX migration_audit_legacy_audit_id_idx ON public.migration_audit (legacy_audit_id)
    WHERE legacy_audit_id IS NOT NULL;
