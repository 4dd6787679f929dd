"""Batch and background queries: a durable job queue (SQLite by default, Redis Streams for replicas),
a worker that runs queries below interactive priority, signed completion webhooks, and the CLI."""
from gateway.jobs.store import Claim, Job, JobStore, QuotaExceeded
from gateway.jobs.webhook import SignatureError, sign, verify_signature

__all__ = ["Claim", "Job", "JobStore", "QuotaExceeded", "SignatureError", "sign", "verify_signature"]
