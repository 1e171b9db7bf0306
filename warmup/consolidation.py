"""Consolidation: moves every finished day's counters into DailyStat, exactly once.

A day is finished once it is over in its tenant's zone; every such day is moved, not only yesterday,
because late opens and asynchronous bounces land on old dates. Each increment reaches `DailyStat` once,
even if consolidation is killed at any instant and run again, and while increments keep arriving:

- Redis: each finished IP-day's hash is renamed to a batch key in the same slot and the batch is
  recorded in an in-flight set (one atomic script). The batches are read, then ONE database transaction
  writes their ids to the `ConsolidationBatch` ledger and adds their figures to `DailyStat`; only after
  the commit are the batch keys deleted. A later run finds the leftovers of a killed one in the in-flight
  set: those in the ledger are deleted, the others applied.
- Database: the finished `CounterCell` rows are locked, added to `DailyStat` and deleted in one
  transaction.

Everything is done in bulk (a constant number of queries and round trips for any number of IP-days).
Runs exclude one another with a PostgreSQL advisory lock (SQLite allows a single writer anyway).
"""

from __future__ import annotations

import logging
import zlib
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import date, datetime
from zoneinfo import ZoneInfo

from django.db import connection, transaction
from django.utils import timezone

from domains.models import IP, Tenant
from warmup_portal.collector import gc_paused

from . import alerts
from .counters import COUNTERS, Batch, DatabaseCounterStore, RedisCounterStore, get_store, split_field
from .models import ConsolidationBatch, CounterCell, DailyStat

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
    if isinstance(store, RedisCounterStore):
        with _session_lock(), gc_paused():
            return _consolidate_redis(store, now)
    if isinstance(store, DatabaseCounterStore):
        with gc_paused():
            return _consolidate_database(now)
    raise TypeError(f"cannot consolidate a {type(store).__name__}")


def checkpoint(step: str) -> None:
    """A named point between two steps; does nothing. The crash tests kill the process here."""


# --- Redis -----------------------------------------------------------------------------------------


def _consolidate_redis(store: RedisCounterStore, now: datetime) -> ConsolidationReport:
    report = ConsolidationReport()
    leftovers = store.in_flight()
    if leftovers:
        applied = set(
            ConsolidationBatch.objects.filter(batch_id__in=[b.batch_id for b in leftovers]).values_list(
                "batch_id", flat=True
            )
        )
        store.forget_batches([b for b in leftovers if b.batch_id in applied])
        checkpoint("leftovers_forgotten")
        unapplied = [b for b in leftovers if b.batch_id not in applied]
        report.recovered = len(leftovers)
        _apply_batches(store, unapplied, _ip_zones({b.ip_id for b in unapplied}), report)

    pending = store.pending_ip_days()
    zones = _ip_zones({ip_id for ip_id, _ in pending})
    todays = _todays(zones.values(), now)
    # An IP deleted since its events were counted has nowhere to go: its days are claimed and dropped.
    finished = [(ip_id, day) for ip_id, day in pending if ip_id not in zones or day < todays[zones[ip_id]]]
    batches = store.claim(finished)
    checkpoint("claimed")
    _apply_batches(store, batches, zones, report)
    return report


def _apply_batches(store: RedisCounterStore, batches: list[Batch], zones: dict, report: ConsolidationReport) -> None:
    for start in range(0, len(batches), CHUNK):
        chunk = batches[start : start + CHUNK]
        figures: dict[tuple[int, date], dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for batch, fields in zip(chunk, store.read_batches(chunk), strict=True):
            if batch.ip_id not in zones:
                logger.warning("Dropping counts of deleted IP #%s on %s: %s", batch.ip_id, batch.day, fields)
                continue
            for field, value in fields.items():
                figures[(batch.ip_id, batch.day)][field] += value
        checkpoint("read")
        with transaction.atomic():
            ConsolidationBatch.objects.bulk_create(
                [
                    ConsolidationBatch(batch_id=b.batch_id, ip_id=b.ip_id if b.ip_id in zones else None, date=b.day)
                    for b in chunk
                ]
            )
            _add_to_daily_stats(figures, report)
            checkpoint("written")
            # After the commit (of the outermost transaction, when a caller holds one): had the
            # transaction rolled back, the batches would stay in flight and be applied next time.
            transaction.on_commit(lambda chunk=chunk: _forget(store, chunk))


def _forget(store: RedisCounterStore, batches: list[Batch]) -> None:
    checkpoint("committed")
    store.forget_batches(batches)
    checkpoint("forgotten")


# --- Database ----------------------------------------------------------------------------------------


def _consolidate_database(now: datetime) -> ConsolidationReport:
    report = ConsolidationReport()
    todays = _todays(Tenant.objects.values_list("time_zone", flat=True).distinct(), now)
    if not todays:
        return report
    with transaction.atomic():
        _transaction_lock()
        cells = (
            CounterCell.objects.select_for_update(of=("self",))
            .filter(date__lt=max(todays.values()))
            .values_list("id", "ip_id", "date", "field", "value", "ip__tenant__time_zone")
        )
        figures: dict[tuple[int, date], dict[str, int]] = defaultdict(lambda: defaultdict(int))
        moved = []
        for cell_id, ip_id, day, field, value, zone in cells:
            if day < todays[zone]:
                figures[(ip_id, day)][field] += value
                moved.append(cell_id)
        checkpoint("read")
        keys = list(figures)
        for start in range(0, len(keys), CHUNK):
            _add_to_daily_stats({key: figures[key] for key in keys[start : start + CHUNK]}, report)
        checkpoint("written")
        for start in range(0, len(moved), CHUNK):
            CounterCell.objects.filter(id__in=moved[start : start + CHUNK]).delete()
        checkpoint("deleted")
    checkpoint("committed")
    return report


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


def _transaction_lock() -> None:
    """Serialise consolidation runs for the rest of the transaction."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [LOCK_ID])
        else:
            # SQLite: take the write lock now rather than upgrade a read lock later, which would fail
            # with "database is locked" as soon as a counter write is waiting.
            table = connection.ops.quote_name(CounterCell._meta.db_table)
            cursor.execute(f"UPDATE {table} SET value = value WHERE 1 = 0")
