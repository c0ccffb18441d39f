"""Revenue assurance: the hash-chained audit trail of money-moving records and reconciliation
of rated usage against a legacy BSS's extracts (docs/adr/0011-audit-chain.md,
docs/legacy-feed.md)."""
