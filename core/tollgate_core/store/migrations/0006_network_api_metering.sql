-- Network API metering (ADR 0015): every call a partner makes to a network API through the
-- GraphQL API is a call record, rated in the same transaction (price per call of the
-- agreement's `networkApis` entry, a ledger transfer receivable:partner:<agreement> →
-- revenue:networkApi). Per-second and per-month counters live here, not in an API process,
-- so limits survive restarts and bind every replica. Same tenancy rules as 0001.

-- One row per metered call. No personal data: the MSISDN a call names stays with the
-- operation's own record (qod_sessions), so the financial record can outlive it.
CREATE TABLE network_api_calls (
    tenant_id         text NOT NULL REFERENCES tenants,
    -- uuid5 of (tenant, agreement, api, idempotency key): a repeat finds the first call
    call_id           uuid NOT NULL,
    agreement         text NOT NULL,
    api               text NOT NULL,
    operation         text NOT NULL,   -- the GraphQL field, e.g. requestQualityOnDemand
    idempotency_key   text NOT NULL,
    -- SHA-256 of the call's input: the same key with another input is a conflict
    request_digest    text NOT NULL CHECK (request_digest ~ '^[0-9a-f]{64}$'),
    called_at         timestamptz NOT NULL,
    -- the first day of the calendar month of `called_at` in the tenant's timezone
    local_month       date NOT NULL CHECK (extract(day FROM local_month) = 1),
    price_micros      bigint NOT NULL CHECK (price_micros >= 0),
    currency          char(3) NOT NULL,
    catalog_revision  integer NOT NULL,
    PRIMARY KEY (tenant_id, call_id),
    FOREIGN KEY (tenant_id, catalog_revision) REFERENCES catalog_revisions
);
CREATE INDEX network_api_calls_by_time
    ON network_api_calls (tenant_id, agreement, called_at DESC, call_id DESC);

-- CAMARA-style Quality-on-Demand session requests; the network (OSS) side is told through
-- the outbox (`tg.<tenant>.oss.provision.request`) in the same transaction.
CREATE TABLE qod_sessions (
    tenant_id         text NOT NULL REFERENCES tenants,
    session_id        uuid NOT NULL,
    call_id           uuid NOT NULL,
    agreement         text NOT NULL,
    msisdn            text NOT NULL,
    profile           text NOT NULL CHECK (profile ~ '^QOS_[A-Z]$'),
    duration_seconds  integer NOT NULL CHECK (duration_seconds BETWEEN 1 AND 86400),
    status            text NOT NULL CHECK (status IN ('requested')),
    requested_at      timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, session_id),
    UNIQUE (tenant_id, call_id),
    FOREIGN KEY (tenant_id, call_id) REFERENCES network_api_calls
);

-- Calls per agreement, API and calendar month (tenant timezone): the monthly quota. A call
-- increments its row only while it is below the quota (one upsert, row-locked to commit).
CREATE TABLE network_api_meters (
    tenant_id   text NOT NULL REFERENCES tenants,
    agreement   text NOT NULL,
    api         text NOT NULL,
    month       date NOT NULL CHECK (extract(day FROM month) = 1),
    calls       bigint NOT NULL CHECK (calls >= 0),
    PRIMARY KEY (tenant_id, agreement, api, month)
);

-- Calls per agreement and API in the current one-second window: `rateLimitPerSecond`.
CREATE TABLE network_api_windows (
    tenant_id     text NOT NULL REFERENCES tenants,
    agreement     text NOT NULL,
    api           text NOT NULL,
    window_start  timestamptz NOT NULL,
    calls         integer NOT NULL CHECK (calls >= 0),
    PRIMARY KEY (tenant_id, agreement, api)
);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['network_api_calls', 'qod_sessions', 'network_api_meters',
        'network_api_windows']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I USING '
                       '(tenant_id = current_setting(''tollgate.tenant'', true)) WITH CHECK '
                       '(tenant_id = current_setting(''tollgate.tenant'', true))', t);
    END LOOP;
END
$$;
-- Call records and session requests are history: insert and read only.
GRANT SELECT, INSERT ON network_api_calls, qod_sessions TO tollgate_app;
GRANT SELECT, INSERT, UPDATE ON network_api_meters, network_api_windows TO tollgate_app;
