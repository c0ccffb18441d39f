-- Revenue assurance: a hash-chained audit trail of every money-moving record, and
-- reconciliation of rated usage against a legacy BSS's extracts (docs/adr/0011-audit-chain.md,
-- docs/legacy-feed.md).
--
-- Audit trail, in two steps:
--   1. capture (hot path): an AFTER INSERT statement trigger on each audited table appends
--      (tenant, kind, entity id, sha256 of the row's canonical form) to `audit_events`, in the
--      writer's own transaction. No chain lock, no read of the previous hash.
--   2. chain (background, `tollgate_core.assurance.chainer`): one chainer per tenant at a time
--      (row lock on `audit_heads`) numbers the committed, not yet chained events 1, 2, 3, … and
--      stores hash_n = sha256(hash_{n-1} || canonical record n). A row whose transaction commits
--      late is simply not visible yet; it is chained in a later round, never skipped.
-- A table joins the trail with one line: SELECT audit_register('<table>', '<kind>', '<key>');

-- Registered kinds: which table, which key, and the SQL expression (over alias `r`) whose text
-- is the canonical form hashed at capture and recomputed by `tollgate audit verify`.
CREATE TABLE audit_kinds (
    kind        text PRIMARY KEY CHECK (kind ~ '^[a-z][a-z0-9_]*$'),
    table_name  text NOT NULL UNIQUE,
    key_column  text NOT NULL,
    key_type    text NOT NULL,
    columns     text[] NOT NULL,
    canonical   text NOT NULL
);

CREATE TABLE audit_events (
    tenant_id    text NOT NULL,  -- copied from the audited row, which has the foreign key
    -- insertion handle (gaps and out-of-order commits allowed); the chain order is chain_seq
    event_no     bigint GENERATED ALWAYS AS IDENTITY,
    kind         text NOT NULL,
    entity_id    text NOT NULL,
    digest       bytea NOT NULL CHECK (octet_length(digest) = 32),
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    chain_seq    bigint CHECK (chain_seq > 0),
    chain_hash   bytea CHECK (octet_length(chain_hash) = 32),
    CHECK ((chain_seq IS NULL) = (chain_hash IS NULL))
);
-- Partial indexes: capture adds one small index entry (the unchained queue); chaining moves the
-- row into the chain index.
CREATE UNIQUE INDEX audit_events_chain ON audit_events (tenant_id, chain_seq)
    WHERE chain_seq IS NOT NULL;
CREATE INDEX audit_events_unchained ON audit_events (tenant_id, event_no)
    WHERE chain_seq IS NULL;

-- The chain's head per tenant; its row lock makes one chainer per tenant at a time.
CREATE TABLE audit_heads (
    tenant_id   text PRIMARY KEY REFERENCES tenants,
    chain_seq   bigint NOT NULL CHECK (chain_seq >= 0),
    chain_hash  bytea NOT NULL CHECK (octet_length(chain_hash) = 32),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Audit events are append-only: the chainer may fill the chain columns of an unchained event
-- once; nothing else is ever updated or deleted (the application role has no DELETE either).
CREATE FUNCTION audit_events_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.chain_seq IS NULL
       AND (NEW.tenant_id, NEW.event_no, NEW.kind, NEW.entity_id, NEW.digest, NEW.recorded_at)
           IS NOT DISTINCT FROM
           (OLD.tenant_id, OLD.event_no, OLD.kind, OLD.entity_id, OLD.digest, OLD.recorded_at)
    THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit events are append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_events_guard BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_guard();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_guard();

-- The canonical text of one column of `r`: JSON values that do not depend on session settings
-- (timestamps in UTC with microseconds, bytea in hex). Floating point, money and intervals are
-- refused: they have no single exact text form.
CREATE FUNCTION audit_canonical_value(col text, typ regtype) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF typ = 'timestamptz'::regtype THEN
        RETURN format('to_char(r.%I AT TIME ZONE ''UTC'', ''YYYY-MM-DD"T"HH24:MI:SS.US"Z"'')',
                      col);
    ELSIF typ = 'timestamp'::regtype THEN
        RETURN format('to_char(r.%I, ''YYYY-MM-DD"T"HH24:MI:SS.US'')', col);
    ELSIF typ = 'bytea'::regtype THEN
        RETURN format('encode(r.%I, ''hex'')', col);
    ELSIF typ IN ('real'::regtype, 'double precision'::regtype, 'money'::regtype,
                  'interval'::regtype) THEN
        RAISE EXCEPTION 'column % of type % has no exact canonical form', col, typ;
    END IF;
    RETURN format('r.%I', col);
END
$$;

-- Make `tbl` part of the audit trail: every row inserted from now on is captured as an audit
-- event of `kind` keyed by `key_column`; `cols` (default: all columns now in the table) are
-- the immutable columns whose values are hashed. With `backfill`, rows already in the table
-- are captured too, in key order. Run it as the tables' owner, in a migration.
CREATE FUNCTION audit_register(tbl regclass, kind text, key_column text,
                               cols text[] DEFAULT NULL, backfill boolean DEFAULT true)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    col record;
    pairs text[] := '{}';
    names text[] := '{}';
    chunks text[] := '{}';
    canonical text;
    key_type text;
    fn text := 'audit_capture_' || kind;
    schema_name text;
    has_tenant boolean;
BEGIN
    SELECT n.nspname INTO schema_name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.oid = 'audit_events'::regclass;
    SELECT format_type(a.atttypid, a.atttypmod) INTO key_type FROM pg_attribute a
        WHERE a.attrelid = tbl AND a.attname = key_column AND a.attnum > 0
          AND NOT a.attisdropped AND a.attnotnull;
    IF key_type IS NULL THEN
        RAISE EXCEPTION 'audit_register: % has no NOT NULL column %', tbl, key_column;
    END IF;
    SELECT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = tbl
                   AND a.attname = 'tenant_id' AND NOT a.attisdropped) INTO has_tenant;
    IF NOT has_tenant THEN
        RAISE EXCEPTION 'audit_register: % has no tenant_id column', tbl;
    END IF;
    FOR col IN
        SELECT a.attname::text AS name, a.atttypid::regtype AS typ FROM pg_attribute a
        WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped
          AND (cols IS NULL OR a.attname::text = ANY (cols))
        ORDER BY a.attnum
    LOOP
        names := names || col.name;
        pairs := pairs || format('%L, %s', col.name, audit_canonical_value(col.name, col.typ));
    END LOOP;
    IF cols IS NOT NULL AND cardinality(names) <> cardinality(cols) THEN
        RAISE EXCEPTION 'audit_register: % lacks some of the columns %', tbl, cols;
    END IF;
    -- jsonb_build_object takes at most 100 arguments: 40 columns per call, merged with ||
    FOR i IN 1 .. cardinality(pairs) BY 40 LOOP
        chunks := chunks || format('jsonb_build_object(%s)',
                                   array_to_string(pairs[i:i + 39], ', '));
    END LOOP;
    canonical := format('(%s)::text', array_to_string(chunks, ' || '));

    EXECUTE format($f$
        CREATE OR REPLACE FUNCTION %I.%I() RETURNS trigger LANGUAGE plpgsql
        SECURITY DEFINER SET search_path = pg_catalog, %I AS $body$
        BEGIN
            INSERT INTO audit_events (tenant_id, kind, entity_id, digest)
            SELECT r.tenant_id, %L, r.%I::text, sha256(convert_to(%s, 'UTF8'))
            FROM new_rows r ORDER BY r.%I;
            RETURN NULL;
        END
        $body$ $f$, schema_name, fn, schema_name, kind, key_column, canonical, key_column);
    EXECUTE format('REVOKE ALL ON FUNCTION %I.%I() FROM PUBLIC', schema_name, fn);
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', 'audit_' || kind, tbl);
    EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %s REFERENCING NEW TABLE AS new_rows'
                   ' FOR EACH STATEMENT EXECUTE FUNCTION %I.%I()',
                   'audit_' || kind, tbl, schema_name, fn);
    INSERT INTO audit_kinds (kind, table_name, key_column, key_type, columns, canonical)
    VALUES (kind, tbl::text, key_column, key_type, names, canonical)
    ON CONFLICT ON CONSTRAINT audit_kinds_pkey DO UPDATE SET table_name = EXCLUDED.table_name,
        key_column = EXCLUDED.key_column, key_type = EXCLUDED.key_type,
        columns = EXCLUDED.columns, canonical = EXCLUDED.canonical;

    IF backfill THEN
        -- FORCE ROW LEVEL SECURITY binds the owner too; lift it for this one statement (the
        -- migration's transaction holds the tables' locks until it commits).
        EXECUTE format('ALTER TABLE %s NO FORCE ROW LEVEL SECURITY', tbl);
        ALTER TABLE audit_events NO FORCE ROW LEVEL SECURITY;
        EXECUTE format($f$
            INSERT INTO audit_events (tenant_id, kind, entity_id, digest)
            SELECT r.tenant_id, %L, r.%I::text, sha256(convert_to(%s, 'UTF8'))
            FROM %s r
            WHERE NOT EXISTS (SELECT 1 FROM audit_events e WHERE e.tenant_id = r.tenant_id
                              AND e.kind = %L AND e.entity_id = r.%I::text)
            ORDER BY r.tenant_id, r.%I $f$,
            kind, key_column, canonical, tbl, kind, key_column, key_column);
        EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', tbl);
        ALTER TABLE audit_events FORCE ROW LEVEL SECURITY;
    END IF;
END
$$;
REVOKE ALL ON FUNCTION audit_register(regclass, text, text, text[], boolean) FROM PUBLIC;

-- Reconciliation with a legacy BSS: one row per run, one row per variance found.
CREATE TABLE reconciliation_runs (
    tenant_id         text NOT NULL REFERENCES tenants,
    run_id            uuid NOT NULL,
    source            text NOT NULL,          -- file name of the legacy extract
    source_sha256     text NOT NULL,
    totals_source     text,
    period_start      timestamptz NOT NULL,
    period_end        timestamptz NOT NULL CHECK (period_end > period_start),
    amount_unit       text NOT NULL CHECK (amount_unit IN ('micro', 'minor')),
    tolerance_micros  bigint NOT NULL CHECK (tolerance_micros >= 0),
    tolerance_ppm     bigint NOT NULL CHECK (tolerance_ppm >= 0),
    legacy_records    bigint NOT NULL,
    tollgate_records  bigint NOT NULL,
    matched           bigint NOT NULL,
    variances         bigint NOT NULL,
    started_at        timestamptz NOT NULL,
    finished_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (tenant_id, run_id)
);
CREATE INDEX reconciliation_runs_recent ON reconciliation_runs (tenant_id, started_at DESC);

CREATE TABLE reconciliation_variances (
    tenant_id               text NOT NULL,
    run_id                  uuid NOT NULL,
    variance_no             integer NOT NULL CHECK (variance_no > 0),
    kind                    text NOT NULL CHECK (kind IN (
        'MISSING_IN_LEGACY', 'MISSING_IN_TOLLGATE', 'DUPLICATE_IN_LEGACY', 'AMOUNT_DIFFERS',
        'ATTRIBUTE_DIFFERS', 'EVENT_ID_DIFFERS', 'TOTAL_MISSING_IN_LEGACY',
        'TOTAL_MISSING_IN_TOLLGATE', 'TOTAL_DUPLICATE_IN_LEGACY', 'TOTAL_DIFFERS')),
    event_id                uuid,
    legacy_record_id        text,
    legacy_line             bigint,
    account_id              text,
    subscriber              text,
    day                     date,
    currency                char(3),
    legacy_amount_micros    bigint,
    tollgate_amount_micros  bigint,
    difference_micros       bigint,
    detail                  text NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id, run_id, variance_no),
    FOREIGN KEY (tenant_id, run_id) REFERENCES reconciliation_runs
);
CREATE INDEX reconciliation_variances_by_kind
    ON reconciliation_variances (tenant_id, run_id, kind, variance_no);

-- a / d rounded half-even (d > 0), the same rule as tollgate_core.domain.money: used to express
-- Tollgate's micro-unit amounts in an extract's unit exactly as a legacy system rounds them.
CREATE FUNCTION assurance_div_half_even(a bigint, d bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT q + CASE WHEN 2 * r > d OR (2 * r = d AND q % 2 <> 0) THEN 1 ELSE 0 END
    FROM (SELECT CASE WHEN a % d < 0 THEN a / d - 1 ELSE a / d END AS q,
                 CASE WHEN a % d < 0 THEN a % d + d ELSE a % d END AS r) AS s
$$;

-- Reconciliation reads rated usage by event time; a BRIN index costs next to nothing on the
-- rating path (one summary per block range) and spares a full scan for a day's extract.
CREATE INDEX rated_usage_start_brin ON rated_usage USING brin (start_time);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['audit_events', 'audit_heads', 'reconciliation_runs',
                             'reconciliation_variances']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I USING '
                       '(tenant_id = current_setting(''tollgate.tenant'', true)) WITH CHECK '
                       '(tenant_id = current_setting(''tollgate.tenant'', true))', t);
    END LOOP;
END
$$;

-- The application role reads the trail and chains it; it cannot insert audit events itself
-- (only the capture triggers do, as the owner), nor delete them.
GRANT SELECT ON audit_kinds TO tollgate_app;
GRANT SELECT ON audit_events TO tollgate_app;
GRANT UPDATE (chain_seq, chain_hash) ON audit_events TO tollgate_app;
GRANT SELECT, INSERT, UPDATE ON audit_heads TO tollgate_app;
GRANT SELECT, INSERT ON reconciliation_runs, reconciliation_variances TO tollgate_app;

-- The money-moving tables, one line each. An invoice's settlement columns (paid, credited,
-- state, reminders) move after issue, so only its immutable content is hashed.
SELECT audit_register('transfers', 'transfer', 'transfer_id');
SELECT audit_register('catalog_revisions', 'catalog_revision', 'revision');
SELECT audit_register('invoices', 'invoice', 'invoice_id', ARRAY[
    'tenant_id', 'invoice_id', 'kind', 'series', 'number', 'bill_no', 'customer_id',
    'period_start', 'period_end', 'bill_date', 'due_date', 'currency', 'net_micros',
    'tax_micros', 'total_micros', 'billed_at']);
SELECT audit_register('payments', 'payment', 'payment_id');
SELECT audit_register('credit_notes', 'credit_note', 'credit_note_id');
