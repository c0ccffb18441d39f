-- GDPR erasure (ADR 0010) reaches the network API side (ADR 0015): the MSISDN of a QoD
-- session request that was the erased customer's line at the time becomes the line's
-- pseudonym, and the call's request digest — a SHA-256 of the request, MSISDN included,
-- which trying the ~10^12 numbers would reverse — is replaced by a random one. The call
-- record stays (a financial record: its charge, revision and statement are untouched).
GRANT UPDATE (msisdn) ON qod_sessions TO tollgate_app;
GRANT UPDATE (request_digest) ON network_api_calls TO tollgate_app;
