"""Helpers for tests that run parts of the portal, or a Redis of their own, in real subprocesses (workers,
crash tests)."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis
from django.conf import settings
from django.db import connection

BASE_DIR = Path(__file__).resolve().parents[2]


def database_url() -> str:
    """A DATABASE_URL naming the test database this session uses, so subprocesses share it."""
    s = connection.settings_dict
    if s["ENGINE"] != "django.db.backends.postgresql":
        raise RuntimeError("subprocess tests need the PostgreSQL test database")
    credentials = s["USER"] + (f":{s['PASSWORD']}" if s["PASSWORD"] else "")
    return f"postgres://{credentials}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url(),
        REDIS_URL=settings.REDIS_URL,
        DJANGO_SETTINGS_MODULE="warmup_portal.settings",
        PYTHONPATH=str(BASE_DIR),
        PYTHONUNBUFFERED="1",
    )
    env.pop("TEST_DATABASE_NAME", None)
    env.update(extra)
    return env


def stop_process_group(process: subprocess.Popen, timeout: float, sig: int = signal.SIGTERM) -> None:
    """Stop a process started with start_new_session=True and its children: `sig` to the whole group
    (also when the leader has already exited), then SIGKILL after `timeout` seconds."""
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:  # the group is gone
        process.wait()
        return
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def run_script(name: str, *args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    """Run tests/support/<name>.py to completion (or until it dies)."""
    return subprocess.run(
        [sys.executable, str(Path(__file__).with_name(name + ".py")), *args],
        env=env,
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_script(name: str, *args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name(name + ".py")), *args],
        env=env,
        cwd=BASE_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def make_store(backend: str, request):
    """The counter store of a backend, on the test's own Redis database (emptied) or the test database."""
    from warmup.counters import DatabaseCounterStore, RedisCounterStore

    if backend == "redis":
        return RedisCounterStore(request.getfixturevalue("redis_client"))
    request.getfixturevalue("db")
    return DatabaseCounterStore()


def free_port(start: int = 6390) -> int:
    for port in range(start, start + 100):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise RuntimeError("no free port for a test Redis")


class OwnRedis:
    """A redis-server of the test's own, persisting to a temporary directory across restarts; `command`: the
    server's command line without its port and directory (docker-compose.yml's, say)."""

    def __init__(self, directory, port: int, command: list[str] | None = None):
        self.directory, self.port, self.process = directory, port, None
        self.command = command or ["redis-server", "--appendonly", "yes", "--appendfsync", "always", "--save", ""]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [*self.command, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("the test Redis did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None
