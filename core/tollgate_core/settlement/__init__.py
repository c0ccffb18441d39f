"""Partner settlement runtime: accruals booked while rating, statements per period (ADR 0012)."""
