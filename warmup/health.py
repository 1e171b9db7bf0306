"""Reachability of what the portal needs: the database, the counter store and the Celery broker.

`/healthz` reports each as "ok" or "error: <reason>"; each check is short (a few seconds at most) so
that a load balancer's or Docker's probe gets an answer even when a dependency hangs.
"""

import os
from pathlib import Path

from django.conf import settings
from django.db import connection

BROKER_TIMEOUT_SECONDS = 2.0


def error_text(exc: BaseException) -> str:
    """A failed check's answer: "error: <exception class>: <message on one line>", at most 300 characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"error: {type(exc).__name__}: {text}"[:300]


def check_database() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:  # any failure is the answer, not a 500
        return error_text(exc)
    return "ok"


def counter_store_failure() -> Exception | None:
    """Why the counter store fails its check (unreachable, refusing writes, set to evict keys); None when
    it passes. The `/healthz` answer, the metrics' gauge and the periodic alert all ask this."""
    from .counters import get_store

    try:
        get_store().ping()
    except Exception as exc:  # CounterStoreUnavailable, or a misconfigured backend
        return exc
    return None


def check_counter_store() -> str:
    failure = counter_store_failure()
    return "ok" if failure is None else error_text(failure)


def check_broker() -> str:
    url = settings.CELERY_BROKER_URL
    if url.startswith("filesystem://"):
        return _check_filesystem_broker()
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=BROKER_TIMEOUT_SECONDS) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=BROKER_TIMEOUT_SECONDS)
    except Exception as exc:  # OperationalError and transport errors
        return error_text(exc)
    return "ok"


def _check_filesystem_broker() -> str:
    options = getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", {}) or {}
    folders = {options.get("data_folder_in"), options.get("data_folder_out"), options.get("processed_folder")}
    folders.discard(None)
    if not folders:
        folders = {str(settings.CELERY_FILESYSTEM_DIR)}
    for folder in sorted(folders):
        path = Path(folder)
        if not path.is_dir():
            return f"error: broker folder {path} does not exist"
        if not os.access(path, os.W_OK | os.X_OK):
            return f"error: broker folder {path} is not writable"
    return "ok"


def run_checks() -> dict[str, str]:
    """{"database": ..., "counter_store": ..., "broker": ...}, each "ok" or "error: ..."."""
    return {"database": check_database(), "counter_store": check_counter_store(), "broker": check_broker()}


def healthy(report: dict[str, str]) -> bool:
    return all(value == "ok" for value in report.values())
