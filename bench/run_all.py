"""Run every benchmark of PRODUCT.md section 10 and print one JSON line per figure.

    make bench             # full sizes (DATABASE_URL / REDIS_URL of the test services)
    make bench QUICK=1     # reduced sizes, under two minutes
    .venv/bin/python bench/run_all.py --only ingest_inprocess consolidation

Each bench script runs in its own process against the bench's own database (`warmup_bench`, created
and migrated here on the server DATABASE_URL names) and Redis db 14; a script that fails or times out
gives `{"ok": false, "error": ...}` lines instead of stopping the others. All lines are also written to
bench/results/latest.jsonl; the exit code is 0 even when targets fail (the figures say so), 2 when the
harness itself could not run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness

# Script name -> (figures it reports, timeout in seconds for full and quick sizes).
SCRIPTS: dict[str, tuple[list[str], int, int]] = {
    "ingest_inprocess": (["ingest_inprocess_ratio", "ingest_inprocess_records_per_s"], 600, 60),
    "ingest_http": (["ingest_http_records_per_s", "ingest_http_ratio"], 900, 90),
    "webhook_json_http": (["webhook_json_http_ratio", "webhook_json_http_requests_per_s"], 600, 90),
    "consolidation": (["consolidation_10k_s", "consolidation_20k_ratio"], 1200, 120),
    "tick": (["tick_10k_s", "tick_query_count"], 1200, 120),
    "admin_api": (
        [
            "admin_ip_changelist_ms",
            "admin_ip_changelist_queries",
            "admin_plan_changelist_ms",
            "admin_plan_changelist_queries",
            "admin_dailystat_changelist_ms",
            "admin_dailystat_changelist_queries",
            "api_warmup_1000_ms",
            "api_warmup_query_count",
        ],
        1800,
        120,
    ),
}


def prepare_database() -> str | None:
    """Create the bench database if needed and migrate it; an error message, or None."""
    import psycopg

    server_url = harness.server_database_url()
    name = harness.BENCH_DB_NAME
    try:
        # The maintenance database: the one DATABASE_URL names need not exist (the tests create theirs).
        maintenance_url = harness._with_path(server_url, "/postgres")
        with psycopg.connect(maintenance_url, autocommit=True, connect_timeout=10) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
            if not exists:
                harness.log(f"creating database {name}")
                conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        return f"cannot create database {name} on {server_url}: {exc}"
    harness.log(f"migrating {name}")
    result = subprocess.run(
        [harness.PYTHON, "manage.py", "migrate", "--no-input", "-v", "0"],
        cwd=harness.ROOT,
        env=harness.bench_environment(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        return "migrate failed: " + (result.stderr or result.stdout)[-800:]
    return None


def run_script(name: str, figures: list[str], timeout: int) -> list[dict]:
    """Run one bench script; its figures, or error lines for those it could not report."""
    harness.log(f"--- {name}")
    started = time.monotonic()
    script = harness.BENCH_DIR / f"{name}.py"
    seen: list[dict] = []
    error = None
    proc = subprocess.Popen(
        [harness.PYTHON, str(script)],
        cwd=harness.ROOT,
        env=harness.bench_environment(),
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, _ = proc.communicate()
        error = f"timed out after {timeout} s"
    for line in out.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        seen.append(record)
        print(json.dumps(record), flush=True)
    if proc.returncode not in (0, None) and error is None:
        error = f"exited with code {proc.returncode} (traceback on stderr above)"
    reported = {r.get("bench") for r in seen}
    for figure in figures:
        if figure not in reported:
            record = {
                "bench": figure,
                "value": None,
                "unit": None,
                "target": None,
                "baseline": None,
                "ok": False,
                "error": error or "not reported",
            }
            seen.append(record)
            print(json.dumps(record), flush=True)
    harness.log(f"    {name} took {time.monotonic() - started:.1f} s")
    return seen


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=sorted(SCRIPTS), help="run only these bench scripts")
    args = parser.parse_args(argv)

    started = time.monotonic()
    harness.log(f"bench: QUICK={'1' if harness.QUICK else '0'} runs={harness.RUNS} nproc={os.cpu_count()}")
    error = prepare_database()
    names = args.only or list(SCRIPTS)
    results: list[dict] = []
    if error:
        harness.log(error)
        for name in names:
            for figure in SCRIPTS[name][0]:
                results.append(harness.emit_error(figure, None, None, error))
    else:
        for name in names:
            figures, full_timeout, quick_timeout = SCRIPTS[name]
            results.extend(run_script(name, figures, quick_timeout if harness.QUICK else full_timeout))

    harness.RESULTS_DIR.mkdir(exist_ok=True)
    with open(harness.RESULTS_DIR / "latest.jsonl", "w") as out:
        for record in results:
            out.write(json.dumps(record) + "\n")
    failed = [r["bench"] for r in results if r.get("ok") is False]
    harness.log(
        f"bench: {len(results)} figures, {len(failed)} not ok"
        + (f" ({', '.join(failed)})" if failed else "")
        + f"; {time.monotonic() - started:.0f} s; results in {harness.RESULTS_DIR / 'latest.jsonl'}"
    )
    return 2 if error else 0


if __name__ == "__main__":
    sys.exit(main())
