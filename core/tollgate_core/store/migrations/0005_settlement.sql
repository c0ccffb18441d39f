-- Partner settlement (B2B2X), ADR 0012: revenue-share accruals booked as usage is rated, the
-- running monthly gross of tiered agreements, and immutable settlement statements.

-- One row per (rated record, agreement) that moves money. Written in the rating transaction
-- with the record and the share's ledger transfer; claimed once by a statement.
CREATE TABLE partner_accruals (
    tenant_id         text NOT NULL REFERENCES tenants,
    event_id          uuid NOT NULL,   -- the rated record: usage event id, or reservation id
    agreement         text NOT NULL,
    partner_id        text NOT NULL,
    catalog_revision  integer NOT NULL,
    event_time        timestamptz NOT NULL,
    -- the event's date in the tenant's timezone: selects the settlement period
    local_day         date NOT NULL,
    units             bigint NOT NULL CHECK (units >= 0),
    gross_micros      bigint NOT NULL CHECK (gross_micros >= 0),
    -- signed: > 0 the operator owes the partner, < 0 the partner owes the operator
    share_micros      bigint NOT NULL,
    -- the record's operator share (gross less every agreement's share; same on each row of
    -- one record), so operator + partners = gross can be checked per record
    operator_micros   bigint NOT NULL,
    currency          char(3) NOT NULL,
    statement_id      uuid,
    created_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, event_id, agreement),
    FOREIGN KEY (tenant_id, catalog_revision) REFERENCES catalog_revisions
);
CREATE INDEX partner_accruals_open ON partner_accruals (tenant_id, agreement, local_day)
    WHERE statement_id IS NULL;
CREATE INDEX partner_accruals_by_statement ON partner_accruals (tenant_id, statement_id)
    WHERE statement_id IS NOT NULL;

-- A claimed accrual stays claimed: only statement_id may change, and only from NULL.
CREATE FUNCTION partner_accrual_claim_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.statement_id IS NOT NULL THEN
        RAISE EXCEPTION 'accrual % of agreement % is already on statement %',
            OLD.event_id, OLD.agreement, OLD.statement_id USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER partner_accruals_claim_once BEFORE UPDATE ON partner_accruals
    FOR EACH ROW EXECUTE FUNCTION partner_accrual_claim_once();

-- Running gross per agreement and calendar month (tenant timezone) of tiered agreements;
-- locked by each batch that accrues to them, so graduated tiers are exact across engines.
CREATE TABLE partner_gross (
    tenant_id     text NOT NULL REFERENCES tenants,
    agreement     text NOT NULL,
    month         date NOT NULL CHECK (extract(day FROM month) = 1),
    gross_micros  bigint NOT NULL DEFAULT 0 CHECK (gross_micros >= 0),
    PRIMARY KEY (tenant_id, agreement, month)
);

-- Immutable: the application role may insert and read, never update or delete.
CREATE TABLE settlement_statements (
    tenant_id                  text NOT NULL REFERENCES tenants,
    statement_id               uuid NOT NULL,
    agreement                  text NOT NULL,
    partner_id                 text NOT NULL,
    period                     text NOT NULL CHECK (period IN ('daily', 'monthly')),
    period_start               date NOT NULL,
    period_end                 date NOT NULL,
    catalog_revision           integer NOT NULL,
    currency                   char(3) NOT NULL,
    settlement_currency        char(3) NOT NULL,
    -- exact decimal, settlement-currency units per tenant-currency unit; none when equal
    fx_rate                    text,
    records                    integer NOT NULL CHECK (records >= 0),
    gross_micros               bigint NOT NULL,
    share_micros               bigint NOT NULL,
    adjustment_micros          bigint NOT NULL,
    adjustment_kind            text CHECK (adjustment_kind IN ('minimumGuarantee', 'cap')),
    payable_micros             bigint NOT NULL,
    settled_gross_micros       bigint NOT NULL,
    settled_share_micros       bigint NOT NULL,
    settled_payable_micros     bigint NOT NULL,
    body                       jsonb NOT NULL,
    issued_at                  timestamptz NOT NULL DEFAULT now(),
    CHECK (period_end > period_start),
    CHECK ((fx_rate IS NULL) = (currency = settlement_currency)),
    CHECK (payable_micros = share_micros + adjustment_micros),
    CHECK ((adjustment_kind IS NULL) = (adjustment_micros = 0)),
    PRIMARY KEY (tenant_id, statement_id),
    UNIQUE (tenant_id, agreement, period, period_start)
);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['partner_accruals', 'partner_gross', 'settlement_statements']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I USING '
                       '(tenant_id = current_setting(''tollgate.tenant'', true)) WITH CHECK '
                       '(tenant_id = current_setting(''tollgate.tenant'', true))', t);
    END LOOP;
END
$$;
GRANT SELECT, INSERT ON partner_accruals TO tollgate_app;
GRANT UPDATE (statement_id) ON partner_accruals TO tollgate_app;
GRANT SELECT, INSERT, UPDATE ON partner_gross TO tollgate_app;
GRANT SELECT, INSERT ON settlement_statements TO tollgate_app;
