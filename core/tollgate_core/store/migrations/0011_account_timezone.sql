-- An account bills in its own timezone (ADR 0013): its bill cycle starts on the tenant's cycle
-- day at local midnight there, and its proration days and usage periods are its local days.
-- An IANA name, checked against the zone database by the application (PostgreSQL keeps a zone
-- database of its own, so billing never converts in SQL); NULL follows the tenant's timezone.
-- The CHECK only keeps the shape of a zone name (no paths, no blanks).
ALTER TABLE customers ADD COLUMN timezone text
    CHECK (timezone ~ '^[A-Za-z][-+A-Za-z0-9_]*(/[A-Za-z0-9][-+A-Za-z0-9_]*)*$'
           AND length(timezone) <= 64);

-- The bill run asks which timezones a tenant's accounts bill in (few accounts have their own).
CREATE INDEX customers_by_timezone ON customers (tenant_id, timezone) WHERE timezone IS NOT NULL;
