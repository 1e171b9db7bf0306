"""What every bench script shares: its environment, its database and Redis, its servers, its output.

Benchmarks never touch the test or development data: they use their own PostgreSQL database
(`warmup_bench`, on the server that DATABASE_URL names) and their own Redis database number
(BENCH_REDIS_DB, 14 by default), both emptied by the scripts. They run the portal as in production:
DEBUG off, a SECRET_KEY and ALLOWED_HOSTS set, SECURE_SSL_REDIRECT off (loopback HTTP).

Each figure is one JSON line on stdout:
    {"bench": ..., "value": ..., "unit": ..., "target": ..., "baseline": ..., "ok": true|false, ...}
A part of the product that is missing or broken gives {"ok": false, "error": "..."} for the figures
that need it, never a traceback that hides the other figures.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
PYTHON = sys.executable
BENCH_DB_NAME = os.environ.get("BENCH_DATABASE_NAME", "warmup_bench")
BENCH_REDIS_DB = int(os.environ.get("BENCH_REDIS_DB", "14"))
QUICK = os.environ.get("QUICK", "").strip().lower() in {"1", "true", "yes", "on"}
# How many times the timed part of a bench is repeated; the figure is the median.
RUNS = int(os.environ.get("BENCH_RUNS", "1" if QUICK else "3"))
RESULTS_DIR = BENCH_DIR / "results"


def log(message: str) -> None:
    """Progress for the person running the bench (stderr; stdout carries only JSON figures)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- Environment ---------------------------------------------------------------------------------


def _with_path(url: str, path: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))


def server_database_url() -> str:
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        raise SystemExit(
            f"bench: DATABASE_URL must name a PostgreSQL server (make bench passes the test services' URL), got {url!r}"
        )
    return url


def bench_environment() -> dict[str, str]:
    """The environment of the bench processes and of the servers they start (production-like)."""
    redis_url = os.environ.get("REDIS_URL", "")
    if not redis_url.startswith("redis"):
        raise SystemExit("bench: REDIS_URL must name a Redis server (make bench passes the test services' URL)")
    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": _with_path(server_database_url(), "/" + BENCH_DB_NAME),
            "REDIS_URL": _with_path(redis_url, f"/{BENCH_REDIS_DB}"),
            "WARMUP_COUNTER_BACKEND": "redis",
            "DJANGO_SETTINGS_MODULE": "warmup_portal.settings",
            "DEBUG": "false",
            "SECRET_KEY": "bench-only-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz",
            "ALLOWED_HOSTS": "127.0.0.1,localhost,testserver",
            "SECURE_SSL_REDIRECT": "false",
            "SESSION_COOKIE_SECURE": "false",
            "CSRF_COOKIE_SECURE": "false",
            "SECURE_HSTS_SECONDS": "0",
            "LOG_LEVEL": "WARNING",
            # Decide and record, send nothing anywhere.
            "WARMUP_DRY_RUN": "true",
            "TELEGRAM_BOT_TOKEN": "",
            "TELEGRAM_CHAT_ID": "",
            # Loopback load generators post far above a sender's rate.
            "WEBHOOK_RATE_LIMIT_PER_MINUTE": "100000000",
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(BENCH_DIR)]),
        }
    )
    env.pop("TEST_DATABASE_NAME", None)
    return env


def setup_django() -> None:
    """Point this process at the bench database and Redis, then set Django up."""
    os.environ.update(bench_environment())
    for path in (str(ROOT), str(BENCH_DIR)):
        if path not in sys.path:
            sys.path.insert(0, path)
    import warnings

    import django

    # WhiteNoise warns that STATIC_ROOT is empty: the benches do not serve static files.
    warnings.filterwarnings("ignore", message="No directory at")
    django.setup()


# --- Output --------------------------------------------------------------------------------------


def emit(
    bench: str,
    value,
    unit: str,
    target: str,
    *,
    ok: bool | None,
    baseline=None,
    **extra,
) -> dict:
    """Print one figure as a JSON line."""
    record = {"bench": bench, "value": value, "unit": unit, "target": target, "baseline": baseline, "ok": ok}
    record.update(extra)
    print(json.dumps(record, default=str), flush=True)
    return record


def emit_error(bench: str, unit: str, target: str, error: str, **extra) -> dict:
    return emit(bench, None, unit, target, ok=False, error=error, **extra)


class Figures:
    """The figures a script promises; those not emitted by the end are reported as errors."""

    def __init__(self, spec: dict[str, tuple[str, str]]):
        self.spec = spec  # name -> (unit, target)
        self.done: set[str] = set()

    def emit(self, name: str, value, *, ok: bool | None, baseline=None, **extra) -> dict:
        unit, target = self.spec[name]
        self.done.add(name)
        return emit(name, value, unit, target, ok=ok, baseline=baseline, **extra)

    def error(self, name: str, error: str, **extra) -> dict:
        unit, target = self.spec[name]
        self.done.add(name)
        return emit_error(name, unit, target, error, **extra)

    def error_rest(self, error: str) -> None:
        for name in self.spec:
            if name not in self.done:
                self.error(name, error)


def run_script(figures: Figures, body: Callable[[Figures], None]) -> None:
    """Run a bench body; any exception becomes an error on the figures not yet reported."""
    try:
        body(figures)
    except MissingPart as exc:
        log(f"missing part: {exc}")
        figures.error_rest(str(exc))
    except Exception as exc:  # a bench reports, it does not crash
        traceback.print_exc(file=sys.stderr)
        figures.error_rest(f"{type(exc).__name__}: {exc}"[:500])
    else:
        figures.error_rest("not measured (an earlier step failed)")


class MissingPart(Exception):
    """A part of the product the bench needs is not there (yet)."""


def need(module: str, *names: str):
    """Import `module` and return the named attributes; MissingPart names what is missing."""
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise MissingPart(f"{module} is missing ({exc})") from None
    except Exception as exc:
        raise MissingPart(f"{module} fails to import: {type(exc).__name__}: {exc}") from None
    values = []
    for name in names:
        if not hasattr(mod, name):
            raise MissingPart(f"{module}.{name} is missing")
        values.append(getattr(mod, name))
    return values[0] if len(values) == 1 else tuple(values)


def median(values) -> float:
    return statistics.median(values)


# --- Database and Redis --------------------------------------------------------------------------


def reset_state() -> None:
    """Empty the bench database's data tables (not its migrations or beat schedules) and its Redis db."""
    from django.db import connection

    keep_prefixes = ("django_migrations", "django_content_type", "auth_permission", "auth_group", "django_celery")
    tables = [t for t in connection.introspection.table_names(include_views=False) if not t.startswith(keep_prefixes)]
    with connection.cursor() as cursor:
        if tables:
            cursor.execute("TRUNCATE {} RESTART IDENTITY CASCADE".format(", ".join(f'"{t}"' for t in tables)))
    flush_redis()


def redis_client():
    import redis

    return redis.Redis.from_url(os.environ["REDIS_URL"])


def flush_redis() -> None:
    client = redis_client()
    db = client.connection_pool.connection_kwargs.get("db")
    if db != BENCH_REDIS_DB:  # never empty someone else's database
        raise RuntimeError(f"refusing to flush Redis db {db}: the bench uses db {BENCH_REDIS_DB}")
    client.flushdb()


def analyze() -> None:
    """Fresh planner statistics after a bulk load, as autovacuum would give a long-lived database."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def query_summary(captured: list[dict], top: int = 6) -> list[tuple[int, str]]:
    """The most repeated statements of a CaptureQueriesContext, as (count, statement start)."""
    import re
    from collections import Counter

    shapes = Counter(re.sub(r"\d+", "N", q["sql"])[:90] for q in captured)
    return [(n, sql) for sql, n in shapes.most_common(top)]


# --- Servers -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


GUNICORN_WORKERS = 2
GUNICORN_THREADS = 2


@contextlib.contextmanager
def gunicorn(app: str, *, env: dict[str, str] | None = None, log_name: str = "gunicorn") -> Iterator[int]:
    """Serve a WSGI app with gunicorn (2 gthread workers, keep-alive) on a free loopback port.

    The same command line serves the portal and the baseline app, so that they compare fairly.
    """
    port = free_port()
    RESULTS_DIR.mkdir(exist_ok=True)
    log_path = RESULTS_DIR / f"{log_name}.log"
    cmd = [
        str(Path(PYTHON).parent / "gunicorn"),
        app,
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(GUNICORN_WORKERS),
        "--worker-class",
        "gthread",
        "--threads",
        str(GUNICORN_THREADS),
        "--keep-alive",
        "30",
        "--timeout",
        "120",
        "--log-level",
        "warning",
        "--chdir",
        str(ROOT),
    ]
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            cmd, env=env or bench_environment(), stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            wait_for_port(port, proc=proc)
            time.sleep(0.5)  # let both workers finish booting
            yield port
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; see {log_path}: {tail(log_path)}") from None
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def connections_by_worker(port: int) -> dict[int, int] | None:
    """The established connections to the server on `port`, per process holding them (`ss` of iproute2);
    None when `ss` is missing."""
    if shutil.which("ss") is None:
        return None
    listing = subprocess.run(
        ["ss", "-tnpH", "state", "established", f"( sport = :{port} )"], capture_output=True, text=True, timeout=10
    ).stdout
    return dict(Counter(int(pid) for pid in re.findall(r"pid=(\d+)", listing)))


def on_one_worker(port: int) -> bool:
    """Whether every connection to the server on `port` is held by one gunicorn worker.

    Workers share the listening socket, and keep-alive connections stay with the worker that accepted
    them. In about one load run in ten (24 runs of wrk with 4 connections: 2), one worker accepts every
    connection: the server then runs on one core, at 45 % of its throughput, whatever the code. The
    load benches take such a run again, for the portal and its baseline alike.
    """
    counts = connections_by_worker(port)
    return GUNICORN_WORKERS > 1 and counts is not None and len(counts) == 1


def tail(path: Path, chars: int = 800) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


# --- Profiles ------------------------------------------------------------------------------------


@contextlib.contextmanager
def maybe_profile(name: str) -> Iterator[None]:
    """With PROFILE=1, profile the block with pyinstrument into bench/results/profile-<name>.txt/.html."""
    if os.environ.get("PROFILE", "").lower() not in {"1", "true", "yes"}:
        yield
        return
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0005)
    profiler.start()
    try:
        yield
    finally:
        profiler.stop()
        RESULTS_DIR.mkdir(exist_ok=True)
        (RESULTS_DIR / f"profile-{name}.txt").write_text(profiler.output_text(unicode=True, show_all=False))
        (RESULTS_DIR / f"profile-{name}.html").write_text(profiler.output_html())
        log(f"profile written to {RESULTS_DIR / f'profile-{name}.txt'}")
