-- Network API calls priced in graduated tiers and settled with the partner (ADRs 0012, 0015).
--
-- `month_call` is the call's number in its calendar month (tenant timezone), counted from 0
-- by the meter row of (agreement, API, month), which stays locked to COMMIT: calls are
-- numbered without gaps or repeats across replicas, and the number picks the price tier.
-- Calls made before this migration have none (they were priced per call).
--
-- `statement_id` is the monthly (or daily) partner settlement statement that nets the call's
-- charge against the partner's revenue shares and clears the receivable. Set once, like an
-- accrual's.
ALTER TABLE network_api_calls
    ADD COLUMN month_call bigint CHECK (month_call >= 0),
    ADD COLUMN statement_id uuid;
CREATE INDEX network_api_calls_open ON network_api_calls (tenant_id, agreement, called_at)
    WHERE statement_id IS NULL;
CREATE INDEX network_api_calls_by_statement ON network_api_calls (tenant_id, statement_id)
    WHERE statement_id IS NOT NULL;

CREATE FUNCTION network_api_call_claim_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.statement_id IS NOT NULL THEN
        RAISE EXCEPTION 'network API call % of agreement % is already on statement %',
            OLD.call_id, OLD.agreement, OLD.statement_id USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER network_api_calls_claim_once BEFORE UPDATE ON network_api_calls
    FOR EACH ROW EXECUTE FUNCTION network_api_call_claim_once();
-- Call records stay history: only the statement that settles them may be set.
GRANT UPDATE (statement_id) ON network_api_calls TO tollgate_app;

-- The statement's other side: the network API calls it settles and their charges (owed by
-- the partner), netted against the payable share. `net` > 0: the operator pays the partner;
-- < 0: the partner pays the operator. Statements made before this have no calls (0).
ALTER TABLE settlement_statements
    ADD COLUMN network_api_calls integer NOT NULL DEFAULT 0 CHECK (network_api_calls >= 0),
    ADD COLUMN network_api_micros bigint NOT NULL DEFAULT 0 CHECK (network_api_micros >= 0),
    ADD COLUMN settled_network_api_micros bigint NOT NULL DEFAULT 0
        CHECK (settled_network_api_micros >= 0),
    ADD COLUMN net_micros bigint GENERATED ALWAYS AS (payable_micros - network_api_micros)
        STORED,
    ADD COLUMN settled_net_micros bigint
        GENERATED ALWAYS AS (settled_payable_micros - settled_network_api_micros) STORED;
-- A partner pages through its statements, newest issued first (GraphQL `partner.statements`).
CREATE INDEX settlement_statements_by_issue
    ON settlement_statements (tenant_id, agreement, issued_at DESC, statement_id DESC);
