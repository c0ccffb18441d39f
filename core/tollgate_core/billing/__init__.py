"""Billing engine: bill runs, payments, credit notes, dunning and documents."""
