"""Consolidation: moves every finished day's counters into DailyStat, exactly once.

A day is finished once it is over in its tenant's zone; every such day is moved, not only yesterday,
because late opens and asynchronous bounces land on old dates. Each increment reaches `DailyStat` once,
even if consolidation is killed at any instant and run again, and while increments keep arriving:

How the finished IP-days are taken out of the counter store, exactly once, is the store's own
(`CounterStore.consolidate`: Redis renames them to batches recorded in a ledger; the database store
moves its rows in one transaction); this module gives it a `Run`: the time, the report, the tenants'
zones and the writing of figures into `DailyStat`, and raises the alerts of every run.

Everything is done in bulk (a constant number of queries and round trips for any number of IP-days).
Runs exclude one another with a PostgreSQL advisory lock (SQLite allows a single writer anyway).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import date, datetime
from zoneinfo import ZoneInfo

from django.db import connection
from django.utils import timezone

from domains.models import IP
from warmup_portal.collector import gc_paused

from . import alerts
from .counters import COUNTERS, get_store, split_field
from .models import DailyStat

logger = logging.getLogger(__name__)

LOCK_ID = zlib.crc32(b"warmup.consolidation")  # the PostgreSQL advisory lock of consolidation runs
CHUNK = 5000  # IP-days per transaction: keeps statements under the databases' parameter limits
_COUNTER_SET = frozenset(COUNTERS)


@dataclass
class ConsolidationReport:
    ip_days: int = 0  # IP-days added to DailyStat
    increments: int = 0  # sum of the counter values moved
    recovered: int = 0  # batches left by an interrupted run and finished by this one
    days: set[date] = dataclass_field(default_factory=set)  # the dates of the IP-days written
    overruns: int = 0  # quota overrun alerts raised for them

    def __str__(self) -> str:
        text = f"{self.ip_days} IP-days consolidated ({self.increments} counted)"
        text += f", {self.recovered} interrupted batches recovered" if self.recovered else ""
        return text + (f", {self.overruns} quota overruns alerted" if self.overruns else "")


def consolidate(now: datetime | None = None, store=None) -> ConsolidationReport:
    """Move every finished IP-day of the counter store into DailyStat; idempotent and exactly-once.

    Every caller (the scheduled task, `consolidate_stats`, the tick's catch-up) gets the same alerts:
    a quota overrun for each IP-day written that sent over its quota, and a consolidation failure when
    it raises (then re-raised, so that a task is retried).
    """
    now = now or timezone.now()
    try:
        report = _consolidate(now, store or get_store())
    except Exception as exc:
        alerts.alert_consolidation_failed(exc, when=now)
        raise
    report.overruns = len(alerts.check_quota_overruns(report.days, when=now))
    return report


def _consolidate(now: datetime, store) -> ConsolidationReport:
    run = Run(now)
    with _session_lock(), gc_paused():
        store.consolidate(run)
    return run.report


def checkpoint(step: str) -> None:
    """A named point between two steps; does nothing. The crash tests kill the process here."""


class Run:
    """What a counter store's `consolidate()` is handed: the time, the report, and the shared steps."""

    CHUNK = CHUNK

    def __init__(self, now: datetime):
        self.now = now
        self.report = ConsolidationReport()

    def checkpoint(self, step: str) -> None:
        checkpoint(step)  # looked up at each call: the crash tests replace it

    def zones(self, ip_ids: Iterable[int]) -> dict[int, str]:
        return _ip_zones(ip_ids)

    def todays(self, zones: Iterable[str]) -> dict[str, date]:
        return _todays(zones, self.now)

    def add(self, figures: Mapping[tuple[int, date], Mapping[str, int]]) -> None:
        """Add per-field figures of IP-days to DailyStat (in the caller's transaction)."""
        _add_to_daily_stats(figures, self.report)


# --- Shared --------------------------------------------------------------------------------------------


def _add_to_daily_stats(figures: Mapping[tuple[int, date], Mapping[str, int]], report: ConsolidationReport) -> None:
    """Add per-field figures ("sent:gmail" -> n) of IP-days to their DailyStat rows, in bulk.

    Counters are added in SQL (INSERT ... ON CONFLICT DO UPDATE SET sent = sent + EXCLUDED.sent), so they
    are exact whatever else writes the row. by_provider is merged in Python from the row read under lock
    (consolidation runs one at a time), which spares dialect-specific JSON arithmetic.
    """
    if not figures:
        return
    by_provider_now = dict(
        ((ip_id, day), by_provider)
        for ip_id, day, by_provider in DailyStat.objects.select_for_update()
        .filter(ip_id__in={ip_id for ip_id, _ in figures}, date__in={day for _, day in figures})
        .values_list("ip_id", "date", "by_provider")
    )
    ops = connection.ops
    json_field = DailyStat._meta.get_field("by_provider")
    updated_at = ops.adapt_datetimefield_value(timezone.now())
    rows = []
    for (ip_id, day), fields in figures.items():
        totals = dict.fromkeys(COUNTERS, 0)
        by_provider = by_provider_now.get((ip_id, day)) or {}
        for field, value in fields.items():
            counter, provider = split_field(field)
            if counter not in _COUNTER_SET or not value:
                continue
            totals[counter] += value
            per_provider = by_provider.setdefault(provider, {})
            per_provider[counter] = per_provider.get(counter, 0) + value
        report.increments += sum(totals.values())
        rows.append(
            [
                ip_id,
                ops.adapt_datefield_value(day),
                *totals.values(),
                json_field.get_db_prep_save(by_provider, connection),
                updated_at,
            ]
        )
    table = ops.quote_name(DailyStat._meta.db_table)
    columns = ["ip_id", "date", *COUNTERS, "by_provider", "updated_at"]
    assignments = [f"{c} = {table}.{c} + EXCLUDED.{c}" for c in COUNTERS]
    assignments += ["by_provider = EXCLUDED.by_provider", "updated_at = EXCLUDED.updated_at"]
    placeholder = "(" + ", ".join(["%s"] * len(columns)) + ")"
    with connection.cursor() as cursor:
        for start in range(0, len(rows), 1000):
            chunk = rows[start : start + 1000]
            cursor.execute(
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join([placeholder] * len(chunk))} "
                f"ON CONFLICT (ip_id, date) DO UPDATE SET {', '.join(assignments)}",
                [value for row in chunk for value in row],
            )
    report.ip_days += len(rows)
    report.days.update(day for _, day in figures)


def _ip_zones(ip_ids: Iterable[int]) -> dict[int, str]:
    """Each existing IP's tenant time zone."""
    ip_ids = list(ip_ids)
    zones: dict[int, str] = {}
    for start in range(0, len(ip_ids), CHUNK):
        zones.update(IP.objects.filter(id__in=ip_ids[start : start + CHUNK]).values_list("id", "tenant__time_zone"))
    return zones


def _todays(zones: Iterable[str], now: datetime) -> dict[str, date]:
    """Today's date in each of the zones."""
    return {zone: now.astimezone(ZoneInfo(zone)).date() for zone in set(zones)}


@contextmanager
def _session_lock() -> Iterator[None]:
    """One consolidation at a time (PostgreSQL; released by the server if the process dies)."""
    if connection.vendor != "postgresql":
        yield
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s)", [LOCK_ID])
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [LOCK_ID])
