"""Ingest: validate incoming telemetry, store it in batches, dead-letter what is bad.

``validation`` is the pure core (``validate``); ``service`` the I/O shell (``IngestService``).
"""

from gridpilot.ingest.service import IngestService, IngestStats
from gridpilot.ingest.validation import (
    Outcome,
    Rejection,
    RejectReason,
    ValidationRules,
    validate,
)

__all__ = [
    "IngestService",
    "IngestStats",
    "Outcome",
    "RejectReason",
    "Rejection",
    "ValidationRules",
    "validate",
]
