-- Billing: bill runs, immutable invoices and statements with gapless numbers, payments,
-- credit notes and dunning. See docs/adr/0013-billing.md.

-- A rated record is stamped when it is written (after its account row is locked), not when its
-- transaction began: a bill run that locked the account and saw no such record can then
-- recognise it as late by `rated_at > billed_at` (see late usage in the ADR).
ALTER TABLE rated_usage ALTER COLUMN rated_at SET DEFAULT clock_timestamp();

-- A customer's records of a month are scattered over the table (events of all customers
-- arrive interleaved), so reading them row by row costs a page each. The bill run and the
-- usage views read them from this index alone (index-only scan, once vacuum has marked the
-- month's pages all-visible): same key as before, the billed columns included.
DROP INDEX rated_usage_by_customer;
CREATE INDEX rated_usage_by_customer ON rated_usage (tenant_id, customer_id, start_time DESC)
    INCLUDE (subscription_id, service, price_name, catalog_revision, quantity, amount_micros,
             rated_at);

-- Dunning suspends subscriptions of accounts long overdue; rating treats them as inactive.
ALTER TABLE subscriptions DROP CONSTRAINT subscriptions_status_check;
ALTER TABLE subscriptions ADD CONSTRAINT subscriptions_status_check
    CHECK (status IN ('active', 'suspended', 'cancelled'));

-- Loyalty tier of a customer (set by CRM or an agent); Offers may price it (dynamicPricing).
ALTER TABLE customers ADD COLUMN loyalty_tier text
    CHECK (loyalty_tier ~ '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$');

-- One counter per tenant and series; a number is taken in the transaction that issues the
-- document, so a failed run gives its numbers back: no holes, no duplicates.
CREATE TABLE document_series (
    tenant_id    text NOT NULL REFERENCES tenants,
    series       text NOT NULL,
    next_number  bigint NOT NULL DEFAULT 1 CHECK (next_number > 0),
    PRIMARY KEY (tenant_id, series)
);

CREATE TABLE bill_runs (
    tenant_id     text NOT NULL REFERENCES tenants,
    period_start  date NOT NULL,
    period_end    date NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    documents     integer NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, period_start)
);

CREATE TABLE invoices (
    tenant_id            text NOT NULL REFERENCES tenants,
    invoice_id           uuid NOT NULL,
    kind                 text NOT NULL CHECK (kind IN ('invoice', 'statement')),
    series               text NOT NULL,
    number               bigint NOT NULL CHECK (number > 0),
    bill_no              text NOT NULL,
    customer_id          uuid NOT NULL,
    period_start         date NOT NULL,
    period_end           date NOT NULL,
    bill_date            date NOT NULL,
    due_date             date,
    currency             char(3) NOT NULL,
    net_micros           bigint NOT NULL,
    tax_micros           bigint NOT NULL,
    total_micros         bigint NOT NULL,
    paid_micros          bigint NOT NULL DEFAULT 0 CHECK (paid_micros >= 0),
    credited_micros      bigint NOT NULL DEFAULT 0 CHECK (credited_micros >= 0),
    state                text NOT NULL CHECK (state IN
                             ('new', 'issued', 'partiallyPaid', 'paid', 'overdue', 'settled')),
    reminders_sent       integer NOT NULL DEFAULT 0,
    -- when the bill run read this account's usage (after locking the account)
    billed_at            timestamptz NOT NULL DEFAULT clock_timestamp(),
    CHECK (total_micros = net_micros + tax_micros),
    PRIMARY KEY (tenant_id, invoice_id),
    UNIQUE (tenant_id, customer_id, period_start),
    UNIQUE (tenant_id, series, number),
    FOREIGN KEY (tenant_id, customer_id) REFERENCES customers
);
CREATE INDEX invoices_open ON invoices (tenant_id, customer_id, due_date)
    WHERE state IN ('issued', 'partiallyPaid', 'overdue');

CREATE TABLE invoice_lines (
    tenant_id         text NOT NULL REFERENCES tenants,
    invoice_id        uuid NOT NULL,
    line_no           integer NOT NULL,
    kind              text NOT NULL CHECK (kind IN ('recurring', 'oneTime', 'usage', 'discount')),
    subscription_id   uuid,
    offer             text NOT NULL,
    price_name        text NOT NULL,
    catalog_revision  integer NOT NULL,
    description       text NOT NULL,
    quantity          bigint NOT NULL,
    coverage_start    date,
    coverage_end      date,
    exact_micros      bigint NOT NULL,
    net_micros        bigint NOT NULL,
    tax_micros        bigint NOT NULL,
    tax_category      text NOT NULL,
    tax_rate          text NOT NULL,
    tax_inclusive     boolean NOT NULL,
    PRIMARY KEY (tenant_id, invoice_id, line_no),
    FOREIGN KEY (tenant_id, invoice_id) REFERENCES invoices,
    FOREIGN KEY (tenant_id, catalog_revision) REFERENCES catalog_revisions
);
-- what earlier documents charged a subscription for a coverage period (or its one-time fee)
CREATE INDEX invoice_lines_charged ON invoice_lines (tenant_id, subscription_id, coverage_start)
    WHERE kind IN ('recurring', 'oneTime');

CREATE TABLE payments (
    tenant_id      text NOT NULL REFERENCES tenants,
    payment_id     text NOT NULL,
    customer_id    uuid NOT NULL,
    amount_micros  bigint NOT NULL CHECK (amount_micros > 0),
    currency       char(3) NOT NULL,
    method         text NOT NULL,
    received_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, payment_id),
    FOREIGN KEY (tenant_id, customer_id) REFERENCES customers
);

CREATE TABLE payment_allocations (
    tenant_id      text NOT NULL REFERENCES tenants,
    payment_id     text NOT NULL,
    invoice_id     uuid NOT NULL,
    amount_micros  bigint NOT NULL CHECK (amount_micros > 0),
    PRIMARY KEY (tenant_id, payment_id, invoice_id),
    FOREIGN KEY (tenant_id, payment_id) REFERENCES payments,
    FOREIGN KEY (tenant_id, invoice_id) REFERENCES invoices
);

-- Adjustments never edit an invoice: a credit note reduces what it asks for.
CREATE TABLE credit_notes (
    tenant_id       text NOT NULL REFERENCES tenants,
    credit_note_id  text NOT NULL,
    series          text NOT NULL,
    number          bigint NOT NULL CHECK (number > 0),
    bill_no         text NOT NULL,
    invoice_id      uuid NOT NULL,
    reason          text NOT NULL,
    net_micros      bigint NOT NULL CHECK (net_micros >= 0),
    tax_micros      bigint NOT NULL CHECK (tax_micros >= 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, credit_note_id),
    UNIQUE (tenant_id, series, number),
    FOREIGN KEY (tenant_id, invoice_id) REFERENCES invoices
);

-- Issued documents are immutable: only their settlement (paid, credited, state, reminders)
-- moves; content changes and deletions are refused for every role.
CREATE FUNCTION refuse_document_edit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' OR TG_TABLE_NAME <> 'invoices' THEN
        RAISE EXCEPTION 'documents are immutable: % on % refused', TG_OP, TG_TABLE_NAME
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF (NEW.invoice_id, NEW.kind, NEW.series, NEW.number, NEW.bill_no, NEW.customer_id,
        NEW.period_start, NEW.period_end, NEW.bill_date, NEW.due_date, NEW.currency,
        NEW.net_micros, NEW.tax_micros, NEW.total_micros, NEW.billed_at)
       IS DISTINCT FROM
       (OLD.invoice_id, OLD.kind, OLD.series, OLD.number, OLD.bill_no, OLD.customer_id,
        OLD.period_start, OLD.period_end, OLD.bill_date, OLD.due_date, OLD.currency,
        OLD.net_micros, OLD.tax_micros, OLD.total_micros, OLD.billed_at) THEN
        RAISE EXCEPTION 'documents are immutable: issue a credit note instead'
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER invoices_immutable BEFORE UPDATE OR DELETE ON invoices
    FOR EACH ROW EXECUTE FUNCTION refuse_document_edit();
CREATE TRIGGER invoice_lines_immutable BEFORE UPDATE OR DELETE ON invoice_lines
    FOR EACH ROW EXECUTE FUNCTION refuse_document_edit();
CREATE TRIGGER credit_notes_immutable BEFORE UPDATE OR DELETE ON credit_notes
    FOR EACH ROW EXECUTE FUNCTION refuse_document_edit();

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['document_series', 'bill_runs', 'invoices', 'invoice_lines',
        'payments', 'payment_allocations', 'credit_notes']
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
