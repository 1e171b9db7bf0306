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


# --- The browser test's Chromium (.ci/install-browser, the `browser` prerequisite of `make test`) --------

INSTALL_BROWSER = SCRIPT.parent.parent / ".ci" / "install-browser"


def test_make_test_installs_the_browser_before_running_the_suite():
    plan = subprocess.run(
        ["make", "-n", "test"], cwd=SCRIPT.parent.parent, capture_output=True, text=True, timeout=60, check=True
    ).stdout.splitlines()
    browser = next(n for n, line in enumerate(plan) if "install-browser" in line)
    pytest_run = next(n for n, line in enumerate(plan) if "-m pytest" in line)
    assert browser < pytest_run


def test_a_present_browser_is_left_alone(tmp_path):
    fake = tmp_path / "chromium"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    done = subprocess.run(
        ["bash", str(INSTALL_BROWSER)], env={**os.environ, "CHROMIUM": str(fake)}, capture_output=True, text=True
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_a_browser_that_cannot_be_installed_is_said_in_one_line(tmp_path):
    # No chromium and no apt-get on the PATH: nothing to install it with.
    env = {"PATH": str(tmp_path), "CHROMIUM": str(tmp_path / "missing-chromium"), "HOME": str(tmp_path)}
    done = subprocess.run(["/bin/bash", str(INSTALL_BROWSER)], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert line.startswith("make test: Chromium is missing") and "apt-get install chromium" in line
