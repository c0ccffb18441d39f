-- Customer care: consent history, orders, GDPR erasures, partner API keys (ADR 0010).
-- Same tenancy rules as 0001: tenant_id on every row, FORCE ROW LEVEL SECURITY keyed on
-- `tollgate.tenant`. History tables are append-only for the application role.

-- Every consent decision is a row; the current consent is the latest row per purpose.
CREATE TABLE consent_records (
    tenant_id    text NOT NULL REFERENCES tenants,
    record_id    uuid NOT NULL,
    customer_id  uuid NOT NULL,
    purpose      text NOT NULL CHECK (purpose IN ('marketing', 'dataProcessing')),
    granted      boolean NOT NULL,
    channel      text NOT NULL CHECK (channel ~ '^[a-z][a-zA-Z]{0,31}$'),
    -- the credential's subject (a customer id, an agent's id), not a name
    recorded_by  text NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (tenant_id, record_id),
    FOREIGN KEY (tenant_id, customer_id) REFERENCES customers
);
CREATE INDEX consent_records_by_customer
    ON consent_records (tenant_id, customer_id, recorded_at DESC, record_id DESC);

-- Orders (TMF622-like): what a customer asked for and where it stands. Items name offers and
-- subscriptions, never the line's MSISDN (personal data stays in customers/subscriptions).
CREATE TABLE orders (
    tenant_id    text NOT NULL REFERENCES tenants,
    order_id     uuid NOT NULL,
    customer_id  uuid NOT NULL,
    order_type   text NOT NULL CHECK (order_type IN ('add', 'cancel')),
    state        text NOT NULL CHECK (state IN ('pending', 'completed', 'cancelled')),
    items        jsonb NOT NULL,   -- [{"action": "add"|"delete", "offerId", "subscriptionId"}]
    due_at       timestamptz,      -- when a pending order takes effect
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (tenant_id, order_id),
    FOREIGN KEY (tenant_id, customer_id) REFERENCES customers
);
CREATE INDEX orders_by_customer ON orders (tenant_id, customer_id, created_at DESC, order_id DESC);
CREATE INDEX orders_by_time ON orders (tenant_id, created_at DESC, order_id DESC);

-- One row per erased customer: who asked and when (the personal fields are pseudonyms now).
CREATE TABLE erasures (
    tenant_id     text NOT NULL REFERENCES tenants,
    customer_id   uuid NOT NULL,
    requested_by  text NOT NULL,
    erased_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (tenant_id, customer_id),
    FOREIGN KEY (tenant_id, customer_id) REFERENCES customers
);

-- Partner API keys: only the SHA-256 of the key is kept (the key itself lives in the
-- PartnerAgreement's Secret, or is shown once in local mode).
CREATE TABLE partner_api_keys (
    tenant_id    text NOT NULL REFERENCES tenants,
    agreement    text NOT NULL,
    key_digest   text NOT NULL CHECK (key_digest ~ '^[0-9a-f]{64}$'),
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz,
    PRIMARY KEY (tenant_id, agreement, key_digest)
);
CREATE UNIQUE INDEX partner_api_keys_by_digest ON partner_api_keys (key_digest);

-- The API's batched reads: a page of customers, and the subscriptions of many customers.
CREATE INDEX customers_by_created ON customers (tenant_id, created_at DESC, customer_id DESC);
CREATE INDEX subscriptions_by_customer ON subscriptions (tenant_id, customer_id);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['consent_records', 'orders', 'erasures', 'partner_api_keys']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I USING '
                       '(tenant_id = current_setting(''tollgate.tenant'', true)) WITH CHECK '
                       '(tenant_id = current_setting(''tollgate.tenant'', true))', t);
    END LOOP;
END
$$;

-- Authenticating a key happens before the tenant is known: a transaction that sets
-- `tollgate.api_key_digest` sees the one row with that digest, and nothing else.
CREATE POLICY key_lookup ON partner_api_keys FOR SELECT
    USING (key_digest = current_setting('tollgate.api_key_digest', true));

GRANT SELECT, INSERT ON consent_records, erasures TO tollgate_app;
GRANT SELECT, INSERT, UPDATE ON orders, partner_api_keys TO tollgate_app;
