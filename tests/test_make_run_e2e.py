"""End to end: `make run`'s Procfile (web, worker, beat) on SQLite with the filesystem broker and the
database counter store consolidates recorded stats on its own.

Everything runs in subprocesses against a throwaway SQLite file and broker folder; the real clock decides
the days (yesterday in UTC is finished at any hour).
"""

import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.support import BASE_DIR, stop_process_group

pytestmark = pytest.mark.e2e


def manage(env: dict, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args], env=env, cwd=BASE_DIR, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_the_procfile_stack_consolidates_recorded_stats(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "TEST_DATABASE_NAME", "CELERY_BROKER_URL")}
    env.update(
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        CELERY_FILESYSTEM_DIR=str(tmp_path / "broker"),
        WARMUP_COUNTER_BACKEND="database",
        PYTHONUNBUFFERED="1",
    )
    for folder in ("out", "processed"):
        (tmp_path / "broker" / folder).mkdir(parents=True)
    # The project's Procfile, on a free port so as not to meet a developer's server.
    procfile = tmp_path / "Procfile"
    procfile.write_text((BASE_DIR / "Procfile").read_text())
    env["WEB_PORT"] = "8769"
    yesterday = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()

    manage(env, "migrate", "--no-input", "-v", "0")
    manage(env, "add_tenant", "--name", "Demo", "--slug", "demo")
    manage(env, "add_domain", "--tenant", "demo", "--domain", "mail1.demo.test", "--ip", "192.0.2.10", "--force")
    manage(env, "record_stats", "--ip", "192.0.2.10", "--date", yesterday, "--sent", "120", "--bounced", "2")
    # Every minute instead of 00:30, as an operator would set it in the admin.
    manage(env, "shell", "-c", "from django_celery_beat.models import PeriodicTask as T; "
           "c = T.objects.get(name='consolidate-warmup-stats').crontab; c.minute = c.hour = '*'; c.save()")  # fmt: skip

    log = (tmp_path / "honcho.log").open("w")
    stack = subprocess.Popen(
        [str(Path(sys.executable).with_name("honcho")), "-f", str(procfile), "-d", str(BASE_DIR), "start"],
        env=env,
        cwd=BASE_DIR,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so that it is stopped whole
    )
    query = "from warmup.models import DailyStat as S; print(list(S.objects.values_list('sent', 'bounced')))"
    try:
        deadline = time.monotonic() + 100
        figures = "[]"
        while time.monotonic() < deadline and figures == "[]":
            time.sleep(2)
            figures = manage(env, "shell", "-c", query).strip().splitlines()[-1]
    finally:
        stop_process_group(stack, timeout=20)
        log.close()
    output = (tmp_path / "honcho.log").read_text()
    assert figures == "[(120, 2)]", output[-4000:]
    assert "warmup.consolidate_warmup_stats" in output and "succeeded" in output
