"""``python -m gateway.telemetry`` → refresh the catalogue table in docs/observability.md."""
from gateway.telemetry.docs import refresh_doc

refresh_doc()
