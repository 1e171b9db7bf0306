"""Consolidation: moves every finished day's counters into DailyStat, exactly once.

INTERFACE (implemented by the counting-pipeline work):

    def consolidate(now: datetime | None = None) -> ConsolidationReport
        # every IP-day before today in its tenant's zone; idempotent; safe to run concurrently
"""


def consolidate(now=None):
    """Placeholder until the counting pipeline lands: nothing to consolidate yet."""
    return None
