"""The database counter store (the embedded default): `CounterCell` and `CounterDedupKey` rows.

The throttling window counters ("@d<bucket>:<provider>" ...) are `CounterCell` rows too, on the event's
day; consolidation leaves them alone and retention deletes them once their day is WINDOW_RETENTION_DAYS
old (`warmup.retention`).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta

from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from domains.models import Tenant

from ..models import CounterCell, CounterDedupKey, MessageRef
from .interface import (
    BUCKET_SECONDS,
    PROVIDERS,
    WINDOW_PREFIX,
    WINDOW_RATE_LIMITED,
    WINDOW_REPUTATION,
    CounterStore,
    CounterStoreUnavailable,
    GroupKey,
    References,
    Window,
    WindowFigures,
    WindowFull,
    _fields_of,
    dedup_digest,
    split_field,
    stored_ref,
    totals,
    window_figures,
)


class DatabaseCounterStore(CounterStore):
    """Counters in `CounterCell` rows, de-duplication keys in `CounterDedupKey` rows.

    One transaction per batch. De-duplication keys go in with INSERT ... ON CONFLICT DO NOTHING RETURNING
    (a key another transaction is inserting makes this one wait for its outcome), counts with
    INSERT ... ON CONFLICT DO UPDATE SET value = value + EXCLUDED.value, both in sorted order so that
    concurrent batches never deadlock. PostgreSQL and SQLite understand the same statements.
    """

    CHUNK = 500  # rows per statement, well under both databases' parameter limits

    def count_batch(
        self,
        groups: Mapping[GroupKey, Sequence[str | None]],
        refs: References | None = None,
        window: Window | None = None,
    ) -> set[tuple[GroupKey, int]]:
        if window is not None:
            self._hit_window(window)
        if not groups and refs is None:
            return set()  # a request with nothing to count: no query
        adds = {key: _fields_of(key[2], key[3]) for key in groups}  # ValueError for an unknown counter
        digests = {key: [dedup_digest(dedup_key).hex() for dedup_key in keys] for key, keys in groups.items()}
        duplicates: set[tuple[GroupKey, int]] = set()
        cells: dict[tuple[int, date, str], int] = defaultdict(int)
        try:
            with transaction.atomic():  # the references and the counts, or neither
                if refs is not None:
                    self.write_refs(refs.tenant_id, refs.refs)
                new_keys = self._insert_dedup_keys(sorted({key for keys in digests.values() for key in keys}))
                for group, keys in digests.items():
                    counted = 0
                    for position, key in enumerate(keys):
                        if key in new_keys:
                            new_keys.discard(key)  # the same key twice in one batch counts once
                            counted += 1
                        else:
                            duplicates.add((group, position))
                    fields = adds[group]
                    for field, amount in zip(fields[::2], fields[1::2], strict=True):
                        if amount and counted:
                            cells[(group[0], group[1], field)] += amount * counted
                self._add_to_cells(sorted(cells.items()))
        except DatabaseError as exc:
            if _is_unavailable(exc):
                raise CounterStoreUnavailable(f"the database is unreachable: {exc}") from exc
            raise
        return duplicates

    def _insert_dedup_keys(self, keys: list[str]) -> set[str]:
        """Insert the keys not kept yet; returns those that were new."""
        quote = connection.ops.quote_name
        table, key = quote(CounterDedupKey._meta.db_table), quote("key")
        expires = connection.ops.adapt_datetimefield_value(
            timezone.now() + timedelta(days=settings.WEBHOOK_DEDUP_TTL_DAYS)
        )
        inserted = self._insert(
            f"INSERT INTO {table} ({key}, {quote('expires_at')}) VALUES {{}} ON CONFLICT ({key}) DO NOTHING "
            f"RETURNING {key}",
            [(k, expires) for k in keys],
        )
        return {row[0] for row in inserted}

    def _add_to_cells(self, cells: list[tuple[tuple[int, date, str], int]]) -> None:
        table = connection.ops.quote_name(CounterCell._meta.db_table)
        adapt = connection.ops.adapt_datefield_value
        self._insert(
            f"INSERT INTO {table} (ip_id, date, field, value) VALUES {{}} "
            f"ON CONFLICT (ip_id, date, field) DO UPDATE SET value = {table}.value + EXCLUDED.value",
            [(ip_id, adapt(day), field, value) for (ip_id, day, field), value in cells],
        )

    def _insert(self, sql: str, rows: list[tuple]) -> list[tuple]:
        """`sql`, an INSERT whose VALUES are "{}", run over `rows` CHUNK at a time; the rows it returns."""
        returned: list[tuple] = []
        with connection.cursor() as cursor:
            for start in range(0, len(rows), self.CHUNK):
                chunk = rows[start : start + self.CHUNK]
                placeholders = "(" + ", ".join(["%s"] * len(chunk[0])) + ")"
                params = [value for row in chunk for value in row]
                cursor.execute(sql.format(", ".join([placeholders] * len(chunk))), params)
                if cursor.description is not None:
                    returned += cursor.fetchall()
        return returned

    def sent_by_provider(self, keys: Sequence[tuple[int, date]]) -> dict[tuple[int, date], dict[str, int]]:
        if not keys:
            return {}
        found = {key: dict.fromkeys(PROVIDERS, 0) for key in keys}
        rows = CounterCell.objects.filter(
            ip_id__in={ip_id for ip_id, _ in keys}, date__in={day for _, day in keys}, field__startswith="sent:"
        ).values_list("ip_id", "date", "field", "value")
        for ip_id, day, field, value in rows:
            sent = found.get((ip_id, day))
            if sent is not None:
                sent[split_field(field)[1]] += value
        return found

    def read(self, ip_id: int, day: date) -> dict[str, int]:
        return totals(dict(CounterCell.objects.filter(ip_id=ip_id, date=day).values_list("field", "value")))

    def window(self, first: int, last: int) -> dict[tuple[int, str], WindowFigures]:
        # The cells' dates are the tenants' days: a day either side of the buckets' UTC dates covers
        # every zone. Two queries: the IPs with a throttling deferral, then their window cells.
        since = datetime.fromtimestamp(first * BUCKET_SECONDS, UTC).date() - timedelta(days=1)
        until = datetime.fromtimestamp(last * BUCKET_SECONDS, UTC).date() + timedelta(days=1)
        cells = CounterCell.objects.filter(date__gte=since, date__lte=until)
        throttled = Q(field__startswith=WINDOW_RATE_LIMITED) | Q(field__startswith=WINDOW_REPUTATION)
        ip_ids = set(cells.filter(throttled).values_list("ip_id", flat=True).distinct())
        if not ip_ids:
            return {}
        rows = cells.filter(ip_id__in=ip_ids, field__startswith=WINDOW_PREFIX).values_list("ip_id", "field", "value")
        return window_figures(rows, first, last)

    def ping(self) -> None:
        try:
            connection.ensure_connection()
        except DatabaseError as exc:
            raise CounterStoreUnavailable(f"the database is unreachable: {exc}") from exc

    # --- Message references: `MessageRef` rows, pruned by retention once expired ---------------------

    def read_refs(self, tenant_id: int, refs: Iterable[str]) -> dict[str, int]:
        stored = {stored_ref(ref): ref for ref in refs}
        if not stored:
            return {}
        rows = MessageRef.objects.filter(
            tenant_id=tenant_id, ref__in=list(stored), expires_at__gt=timezone.now()
        ).values_list("ref", "ip_id")
        return {stored[ref]: ip_id for ref, ip_id in rows}

    def write_refs(self, tenant_id: int, refs: Mapping[str, int]) -> None:
        if not refs:
            return
        expires_at = timezone.now() + timedelta(days=settings.WEBHOOK_MESSAGE_REF_TTL_DAYS)
        rows = [
            MessageRef(tenant_id=tenant_id, ref=stored_ref(ref), ip_id=ip_id, expires_at=expires_at)
            for ref, ip_id in refs.items()
        ]
        try:
            MessageRef.objects.bulk_create(
                rows, update_conflicts=True, unique_fields=["tenant", "ref"], update_fields=["ip", "expires_at"]
            )
        except DatabaseError as exc:
            if _is_unavailable(exc):
                raise CounterStoreUnavailable(f"the database is unreachable: {exc}") from exc
            raise

    # --- Fixed windows: counted in this process's memory. The embedded default runs on one host, where
    # a count per web process is close enough, and a rate limit costs no query.

    _windows: dict[str, tuple[float, int]] = {}  # name -> (expiry on the monotonic clock, hits)
    _windows_lock = threading.Lock()

    def _hit_window(self, window: Window) -> None:
        now = time.monotonic()
        with self._windows_lock:
            if len(self._windows) > 10_000:  # forget finished windows now and then
                for stale in [key for key, (expiry, _) in self._windows.items() if expiry <= now]:
                    del self._windows[stale]
            expiry, hits = self._windows.get(window.name, (now + 2 * window.seconds, 0))
            self._windows[window.name] = (expiry, hits + 1)
        if hits + 1 > window.limit:
            raise WindowFull(window.name)

    # --- Consolidation (`warmup.consolidation`): the finished `CounterCell` rows are locked, added to
    # `DailyStat` and deleted in one transaction.

    def consolidate(self, run) -> None:
        todays = run.todays(Tenant.objects.values_list("time_zone", flat=True).distinct())
        if not todays:
            return
        with transaction.atomic():
            _lock_cells()
            cells = (
                CounterCell.objects.select_for_update(of=("self",))
                .filter(date__lt=max(todays.values()))
                .exclude(field__startswith=WINDOW_PREFIX)  # window counters: pruned by retention, not consolidated
                .values_list("id", "ip_id", "date", "field", "value", "ip__tenant__time_zone")
            )
            figures: dict[tuple[int, date], dict[str, int]] = defaultdict(lambda: defaultdict(int))
            moved = []
            for cell_id, ip_id, day, field, value, zone in cells:
                if day < todays[zone]:
                    figures[(ip_id, day)][field] += value
                    moved.append(cell_id)
            run.checkpoint("read")
            keys = list(figures)
            for start in range(0, len(keys), run.CHUNK):
                run.add({key: figures[key] for key in keys[start : start + run.CHUNK]})
            run.checkpoint("written")
            for start in range(0, len(moved), run.CHUNK):
                CounterCell.objects.filter(id__in=moved[start : start + run.CHUNK]).delete()
            run.checkpoint("deleted")
        run.checkpoint("committed")


def _lock_cells() -> None:
    """SQLite: take the write lock now rather than upgrade a read lock later, which would fail with
    "database is locked" as soon as a counter write is waiting. (PostgreSQL runs are serialised by the
    advisory lock consolidation holds.)"""
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            table = connection.ops.quote_name(CounterCell._meta.db_table)
            cursor.execute(f"UPDATE {table} SET value = value WHERE 1 = 0")


def _is_unavailable(exc: DatabaseError) -> bool:
    return isinstance(exc, OperationalError | InterfaceError)
