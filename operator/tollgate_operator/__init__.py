"""Tollgate's Kubernetes operator (Kopf): Tenants → workloads, Offers/PartnerAgreements → catalog.

Entry point: :func:`tollgate_operator.main.run` with a :class:`tollgate_operator.settings.Settings`.
Handlers are thin (``*_handlers.py``), decisions live in ``*_logic.py``, manifests are pure
(``manifests.py``); see docs/adr/0006-operator.md.
"""
