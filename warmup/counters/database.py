"""The database counter store (the embedded default): `CounterCell` and `CounterDedupKey` rows."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from datetime import date, timedelta

from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, connection, transaction
from django.db.models import Sum
from django.utils import timezone

from ..models import CounterCell, CounterDedupKey
from .interface import CounterStore, CounterStoreUnavailable, Increment, check_increment, totals


class DatabaseCounterStore(CounterStore):
    """Counters in `CounterCell` rows, de-duplication keys in `CounterDedupKey` rows.

    One transaction per batch. De-duplication keys go in with INSERT ... ON CONFLICT DO NOTHING RETURNING
    (a key another transaction is inserting makes this one wait for its outcome), counts with
    INSERT ... ON CONFLICT DO UPDATE SET value = value + EXCLUDED.value, both in sorted order so that
    concurrent batches never deadlock. PostgreSQL and SQLite understand the same statements.
    """

    CHUNK = 500  # rows per statement, well under both databases' parameter limits

    def apply(self, increments: Sequence[Increment]) -> list[bool]:
        if not increments:
            return []
        for inc in increments:
            check_increment(inc)
        try:
            with transaction.atomic():
                new_keys = self._insert_dedup_keys(
                    sorted({self._key(inc.dedup_key) for inc in increments if inc.dedup_key is not None})
                )
                result = []
                cells: dict[tuple[int, date, str], int] = defaultdict(int)
                for inc in increments:
                    if inc.dedup_key is not None:
                        key = self._key(inc.dedup_key)
                        if key not in new_keys:
                            result.append(False)
                            continue
                        new_keys.discard(key)  # the same key twice in one batch counts once
                    result.append(True)
                    for name, value in inc.counts.items():
                        if value:
                            cells[(inc.ip_id, inc.day, f"{name}:{inc.provider}")] += value
                self._add_to_cells(sorted(cells.items()))
        except DatabaseError as exc:
            if _is_unavailable(exc):
                raise CounterStoreUnavailable(f"the database is unreachable: {exc}") from exc
            raise
        return result

    @staticmethod
    def _key(dedup_key: str) -> str:
        # The key column holds 64 characters; longer keys are replaced by their digest.
        return dedup_key if len(dedup_key) <= 64 else hashlib.sha256(dedup_key.encode()).hexdigest()

    def _insert_dedup_keys(self, keys: list[str]) -> set[str]:
        if not keys:
            return set()
        quote = connection.ops.quote_name
        table, key_column, expires_column = quote(CounterDedupKey._meta.db_table), quote("key"), quote("expires_at")
        expires = connection.ops.adapt_datetimefield_value(
            timezone.now() + timedelta(days=settings.WEBHOOK_DEDUP_TTL_DAYS)
        )
        inserted: set[str] = set()
        with connection.cursor() as cursor:
            for start in range(0, len(keys), self.CHUNK):
                chunk = keys[start : start + self.CHUNK]
                params: list = []
                for key in chunk:
                    params += (key, expires)
                values = ", ".join(["(%s, %s)"] * len(chunk))
                cursor.execute(
                    f"INSERT INTO {table} ({key_column}, {expires_column}) VALUES {values} "
                    f"ON CONFLICT ({key_column}) DO NOTHING RETURNING {key_column}",
                    params,
                )
                inserted.update(row[0] for row in cursor.fetchall())
        return inserted

    def _add_to_cells(self, cells: list[tuple[tuple[int, date, str], int]]) -> None:
        if not cells:
            return
        table = connection.ops.quote_name(CounterCell._meta.db_table)
        adapt = connection.ops.adapt_datefield_value
        with connection.cursor() as cursor:
            for start in range(0, len(cells), self.CHUNK):
                chunk = cells[start : start + self.CHUNK]
                params: list = []
                for (ip_id, day, field), value in chunk:
                    params += (ip_id, adapt(day), field, value)
                cursor.execute(
                    f"INSERT INTO {table} (ip_id, date, field, value) "
                    f"VALUES {', '.join(['(%s, %s, %s, %s)'] * len(chunk))} "
                    f"ON CONFLICT (ip_id, date, field) DO UPDATE SET value = {table}.value + EXCLUDED.value",
                    params,
                )

    def sent_on(self, keys: Sequence[tuple[int, date]]) -> dict[tuple[int, date], int]:
        if not keys:
            return {}
        wanted = set(keys)
        rows = (
            CounterCell.objects.filter(
                ip_id__in={ip_id for ip_id, _ in keys}, date__in={day for _, day in keys}, field__startswith="sent:"
            )
            .values_list("ip_id", "date")
            .annotate(total=Sum("value"))
        )
        found = {(ip_id, day): total for ip_id, day, total in rows if (ip_id, day) in wanted}
        return {key: found.get(key, 0) for key in keys}

    def read(self, ip_id: int, day: date) -> dict[str, int]:
        return totals(dict(CounterCell.objects.filter(ip_id=ip_id, date=day).values_list("field", "value")))

    def ping(self) -> None:
        try:
            connection.ensure_connection()
        except DatabaseError as exc:
            raise CounterStoreUnavailable(f"the database is unreachable: {exc}") from exc


def _is_unavailable(exc: DatabaseError) -> bool:
    return isinstance(exc, OperationalError | InterfaceError)
