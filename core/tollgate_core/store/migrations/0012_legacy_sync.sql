-- Legacy integration (docs/adr/0017-legacy-integration.md): `tollgate assurance sync` mirrors
-- rated usage and customer documents to the legacy system in numbered batches, and reconciles
-- the legacy system's extracts once each (identified by their SHA-256).

-- One row per mirror batch: the records rated (`rated_at`) and documents issued (`billed_at`)
-- in (from_time, to_time]. A batch is recorded before its files are written (written_at
-- NULL), so a run that dies in between writes the very same files again, under the same
-- names, instead of a new batch that would repeat records the legacy system already took.
CREATE TABLE legacy_mirror_batches (
    tenant_id     text NOT NULL REFERENCES tenants,
    batch_no      bigint NOT NULL CHECK (batch_no > 0),
    from_time     timestamptz,                       -- exclusive; NULL: from the start
    to_time       timestamptz NOT NULL,              -- inclusive
    amount_unit   text NOT NULL CHECK (amount_unit IN ('micro', 'minor')),
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    records       bigint CHECK (records >= 0),
    invoices      bigint CHECK (invoices >= 0),
    files         jsonb,                             -- file name -> SHA-256, once written
    written_at    timestamptz,
    PRIMARY KEY (tenant_id, batch_no),
    CHECK (from_time IS NULL OR to_time > from_time),
    CHECK ((written_at IS NULL) = (files IS NULL))
);

ALTER TABLE legacy_mirror_batches ENABLE ROW LEVEL SECURITY;
ALTER TABLE legacy_mirror_batches FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON legacy_mirror_batches
    USING (tenant_id = current_setting('tollgate.tenant', true))
    WITH CHECK (tenant_id = current_setting('tollgate.tenant', true));
GRANT SELECT, INSERT ON legacy_mirror_batches TO tollgate_app;
GRANT UPDATE (records, invoices, files, written_at) ON legacy_mirror_batches TO tollgate_app;

-- A mirror batch reads by write time. Rows are appended in write-time order, so a BRIN index
-- costs next to nothing on the rating and billing paths (one summary per block range) and
-- spares a full scan per batch.
CREATE INDEX rated_usage_rated_brin ON rated_usage USING brin (rated_at);
CREATE INDEX invoices_billed_brin ON invoices USING brin (billed_at);

-- "Was this extract reconciled already?" by its content.
CREATE INDEX reconciliation_runs_by_sha256 ON reconciliation_runs (tenant_id, source_sha256);
