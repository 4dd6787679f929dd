"""Upstream clients, one module per backend, behind the Protocols in ``base``."""
