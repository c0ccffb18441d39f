"""Tollgate package."""
