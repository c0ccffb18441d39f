-- Foundation: tenants, catalog revisions, customers, subscriptions, ledger, rating, messaging.
-- Every tenant-owned table carries tenant_id and is guarded by row-level security keyed on the
-- per-transaction setting `tollgate.tenant`; the application role owns nothing and cannot
-- bypass RLS (FORCE ROW LEVEL SECURITY also binds the owner).

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tollgate_app') THEN
        CREATE ROLE tollgate_app NOLOGIN NOSUPERUSER NOBYPASSRLS;
    END IF;
END
$$;

CREATE TABLE tenants (
    tenant_id   text PRIMARY KEY CHECK (tenant_id ~ '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'),
    spec        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE catalog_revisions (
    tenant_id     text NOT NULL REFERENCES tenants,
    revision      integer NOT NULL CHECK (revision > 0),
    digest        text NOT NULL,
    body          jsonb NOT NULL,
    published_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (tenant_id, revision)
);

-- Personal data lives here only; financial rows carry the pseudonymous customer_id.
CREATE TABLE customers (
    tenant_id      text NOT NULL REFERENCES tenants,
    customer_id    uuid NOT NULL,
    name           text,
    email          text,
    customer_type  text NOT NULL DEFAULT 'consumer',
    payment_type   text NOT NULL CHECK (payment_type IN ('prepaid', 'postpaid')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    erased_at      timestamptz,
    PRIMARY KEY (tenant_id, customer_id)
);

CREATE TABLE subscriptions (
    tenant_id        text NOT NULL REFERENCES tenants,
    subscription_id  uuid NOT NULL,
    customer_id      uuid NOT NULL,
    offer            text NOT NULL,
    subscriber       text NOT NULL,
    status           text NOT NULL CHECK (status IN ('active', 'cancelled')),
    catalog_revision integer NOT NULL,
    started_at       timestamptz NOT NULL,
    ended_at         timestamptz,
    PRIMARY KEY (tenant_id, subscription_id),
    FOREIGN KEY (tenant_id, customer_id) REFERENCES customers
);
CREATE INDEX subscriptions_by_subscriber ON subscriptions (tenant_id, subscriber)
    WHERE status = 'active';

CREATE TABLE ledger_accounts (
    tenant_id       text NOT NULL REFERENCES tenants,
    account_id      text NOT NULL,
    kind            text NOT NULL,
    currency        char(3) NOT NULL,
    balance_micros  bigint NOT NULL DEFAULT 0,
    -- debits reserved by online charging and not yet posted or voided (two-phase transfers)
    pending_micros  bigint NOT NULL DEFAULT 0 CHECK (pending_micros >= 0),
    -- a prepaid balance, less what is reserved, may not go below its floor (minus the credit
    -- limit); NULL: no floor (postpaid, system accounts)
    floor_micros    bigint,
    CHECK (floor_micros IS NULL OR balance_micros - pending_micros >= floor_micros),
    PRIMARY KEY (tenant_id, account_id)
);

CREATE TABLE transfers (
    tenant_id        text NOT NULL REFERENCES tenants,
    transfer_id      uuid NOT NULL,
    debit_account    text NOT NULL,
    credit_account   text NOT NULL,
    amount_micros    bigint NOT NULL CHECK (amount_micros > 0),
    currency         char(3) NOT NULL,
    code             text NOT NULL,
    cause_id         text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CHECK (debit_account <> credit_account),
    PRIMARY KEY (tenant_id, transfer_id),
    FOREIGN KEY (tenant_id, debit_account) REFERENCES ledger_accounts,
    FOREIGN KEY (tenant_id, credit_account) REFERENCES ledger_accounts
);

CREATE TABLE allowance_usage (
    tenant_id        text NOT NULL REFERENCES tenants,
    subscription_id  uuid NOT NULL,
    allowance        text NOT NULL,
    period_start     date NOT NULL,
    quantity         bigint NOT NULL CHECK (quantity >= 0),
    used             bigint NOT NULL DEFAULT 0 CHECK (used >= 0),
    reserved         bigint NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    CHECK (used + reserved <= quantity),
    PRIMARY KEY (tenant_id, subscription_id, allowance, period_start)
);

CREATE TABLE paid_usage (
    tenant_id        text NOT NULL REFERENCES tenants,
    subscription_id  uuid NOT NULL,
    service          text NOT NULL,
    period_start     date NOT NULL,
    units            bigint NOT NULL DEFAULT 0 CHECK (units >= 0),
    PRIMARY KEY (tenant_id, subscription_id, service, period_start)
);

CREATE TABLE rated_usage (
    tenant_id         text NOT NULL REFERENCES tenants,
    event_id          uuid NOT NULL,
    subscription_id   uuid NOT NULL,
    customer_id       uuid NOT NULL,
    service           text NOT NULL,
    quantity          bigint NOT NULL,
    allowance_units   bigint NOT NULL,
    chargeable_units  bigint NOT NULL,
    amount_micros     bigint NOT NULL CHECK (amount_micros >= 0),
    currency          char(3) NOT NULL,
    price_name        text,
    -- multipliers applied beyond the tariff (zone, congestion level), so it can be re-rated
    price_factors     jsonb NOT NULL DEFAULT '{}',
    catalog_revision  integer NOT NULL,
    start_time        timestamptz NOT NULL,
    rated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, event_id),
    FOREIGN KEY (tenant_id, catalog_revision) REFERENCES catalog_revisions
);
CREATE INDEX rated_usage_by_customer ON rated_usage (tenant_id, customer_id, start_time DESC);

-- Online charging: a reservation is a pending transfer of money and/or allowance units,
-- then posted (commit) or voided (release, expiry). (session_id, request_number) makes a
-- retried reserve return the first answer.
CREATE TABLE reservations (
    tenant_id         text NOT NULL REFERENCES tenants,
    reservation_id    uuid NOT NULL,
    session_id        text NOT NULL,
    request_number    integer NOT NULL CHECK (request_number >= 0),
    subscription_id   uuid NOT NULL,
    customer_id       uuid NOT NULL,
    service           text NOT NULL,
    granted_units     bigint NOT NULL CHECK (granted_units >= 0),
    allowance_units   jsonb NOT NULL,  -- [[allowance, period_start, units], …] reserved
    pending_micros    bigint NOT NULL CHECK (pending_micros >= 0),
    price_factors     jsonb NOT NULL DEFAULT '{}',
    price_factor      text NOT NULL DEFAULT '1',  -- their product, an exact fraction "n/d"
    catalog_revision  integer NOT NULL,
    state             text NOT NULL CHECK (state IN ('pending', 'posted', 'voided', 'expired')),
    used_units        bigint,
    charged_micros    bigint,
    created_at        timestamptz NOT NULL DEFAULT now(),
    expires_at        timestamptz NOT NULL,
    closed_at         timestamptz,
    PRIMARY KEY (tenant_id, reservation_id),
    UNIQUE (tenant_id, session_id, request_number)
);
CREATE INDEX reservations_expiring ON reservations (expires_at) WHERE state = 'pending';

-- Each threshold fires once per subscription (or customer) and period.
CREATE TABLE threshold_notifications (
    tenant_id      text NOT NULL REFERENCES tenants,
    owner_id       uuid NOT NULL,
    threshold_key  text NOT NULL,
    period_start   date NOT NULL,
    crossed_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, owner_id, threshold_key, period_start)
);

-- Consumers record each event they handled in the same transaction as its effect.
CREATE TABLE inbox (
    tenant_id     text NOT NULL REFERENCES tenants,
    consumer      text NOT NULL,
    event_id      text NOT NULL,
    processed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, consumer, event_id)
);

CREATE TABLE dead_letters (
    tenant_id    text NOT NULL REFERENCES tenants,
    event_id     text NOT NULL,
    subject      text NOT NULL,
    reason       text NOT NULL,
    detail       text NOT NULL,
    payload      bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    redriven_at  timestamptz,
    PRIMARY KEY (tenant_id, event_id)
);

-- Events that must not be lost are written here with the change, then relayed to NATS.
CREATE TABLE outbox (
    tenant_id     text NOT NULL REFERENCES tenants,
    id            uuid NOT NULL,
    subject       text NOT NULL,
    payload       bytea NOT NULL,
    headers       jsonb NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    published_at  timestamptz,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX outbox_pending ON outbox (created_at) WHERE published_at IS NULL;

-- Mutations carry an idempotency key; a repeat returns the first result.
CREATE TABLE idempotency_keys (
    tenant_id     text NOT NULL REFERENCES tenants,
    key           text NOT NULL,
    request_hash  text NOT NULL,
    response      jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, key)
);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['tenants', 'catalog_revisions', 'customers', 'subscriptions',
        'ledger_accounts', 'transfers', 'allowance_usage', 'paid_usage', 'rated_usage', 'inbox',
        'dead_letters', 'outbox', 'idempotency_keys', 'reservations',
        'threshold_notifications']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I USING '
                       '(tenant_id = current_setting(''tollgate.tenant'', true)) WITH CHECK '
                       '(tenant_id = current_setting(''tollgate.tenant'', true))', t);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO tollgate_app', t);
    END LOOP;
END
$$;
