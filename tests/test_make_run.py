"""`make run` from a copy of the tree, as on a fresh clone: the embedded default (SQLite, database counters,
filesystem broker) migrates, loads the demo tenant, prints the admin password once and serves the admin.

The copy shares this checkout's virtualenv (installing the requirements again would only fetch the same
packages); everything else, the database included, is the copy's own.
"""

import os
import re
import shutil
import socket
import sqlite3
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support import stop_process_group

pytestmark = pytest.mark.e2e

BASE_DIR = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def copy_tree(target: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=BASE_DIR, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, files):
        source = BASE_DIR / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)  # keeps mtimes: make sees the venv as up to date
    (target / ".venv").symlink_to(BASE_DIR / ".venv")


def test_make_run_serves_the_admin_with_the_demo_tenant(tmp_path: Path):
    checkout = tmp_path / "portal"
    checkout.mkdir()
    copy_tree(checkout)
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DATABASE_URL", "REDIS_URL", "CELERY_", "TEST_DATABASE", "WARMUP_", "DJANGO_"))
    }
    env.update(WEB_PORT=str(port), PYTHONUNBUFFERED="1")
    log_path = tmp_path / "make-run.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            ["make", "run"], cwd=checkout, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        login = wait_for_page(f"http://127.0.0.1:{port}/admin/login/", process, log_path, timeout=240)
        assert "Warmup Portal" in login
        output = log_path.read_text()
        assert len(re.findall(r"Created superuser 'admin' with password: \S+", output)) == 1

        with sqlite3.connect(checkout / "db.sqlite3") as db:
            domains = [row[0] for row in db.execute("select name from domains_domain order by name")]
            ips = [row[0] for row in db.execute("select address from domains_ip order by address")]
            stats = db.execute("select count(*) from warmup_dailystat").fetchone()[0]
        assert domains == [f"mail{n}.sos-mail.com" for n in range(1, 6)]
        assert ips == [f"45.123.10.{n}" for n in range(1, 6)]
        assert stats > 0  # --history filled the past days
    finally:
        stop_process_group(process, timeout=30)


def wait_for_page(url: str, process: subprocess.Popen, log_path: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"make run exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return response.read().decode()
        except OSError:
            pass
        time.sleep(1)
    pytest.fail(f"{url} did not answer within {timeout} s:\n{log_path.read_text()[-3000:]}")
