"""Pure domain of the BSS: money, catalog, rating, ledger. No I/O lives here."""
