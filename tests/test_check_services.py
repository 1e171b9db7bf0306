"""`make test` names, in one line, the service it cannot reach (scripts/check_services.py)."""

import os
import socket
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "check_services.py"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once the socket is closed


def check(database_url: str, redis_url: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url}
    return subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30)


def test_it_passes_quietly_when_both_services_answer():
    done = check(os.environ["DATABASE_URL"], os.environ["REDIS_URL"])
    assert (done.returncode, done.stderr) == (0, "")


def test_it_names_postgresql_when_the_database_is_unreachable():
    port = closed_port()
    done = check(f"postgres://postgres@127.0.0.1:{port}/x", os.environ["REDIS_URL"])
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"make test: PostgreSQL is not reachable at postgres@127.0.0.1:{port} (DATABASE_URL); "
        "start it or point the variable elsewhere."
    ]


def test_it_names_redis_when_redis_is_unreachable():
    port = closed_port()
    done = check(os.environ["DATABASE_URL"], f"redis://127.0.0.1:{port}/0")
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1 and "Redis is not reachable" in done.stderr
