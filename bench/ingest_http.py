"""PowerMTA CSV ingestion through HTTP: gunicorn (2 gthread workers) serving the portal, batches of 1,000
records posted to /api/v1/webhooks/powermta/ with a tenant token, vs a bare `csv.reader` pass over the
same bytes in the same run.

The load generator runs in separate processes (CLIENTS of them, one keep-alive `http.client`
connection each), bounded in batches and in time. Every record must be answered for (accepted) and the
counter store totals must equal what the records add.

Targets (PRODUCT.md section 10): >= 100,000 records/s, and >= 0.25 x csv.reader records/s.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import time
from collections import Counter

import datasets
import harness
import ingest_common
from harness import QUICK, RUNS, Figures, MissingPart, log, median

FIGURES = Figures(
    {
        "ingest_http_records_per_s": ("records/s", ">= 100000"),
        "ingest_http_ratio": ("x csv.reader", ">= 0.25"),
    }
)
PATH = "/api/v1/webhooks/powermta/"
CLIENTS = 3
BATCHES = 24 if QUICK else 120
RECORDS_PER_BATCH = 1000
TIME_LIMIT = 30 if QUICK else 120  # seconds per run, whatever the server's speed
REDRAWS = 4  # see load


def client(port: int, token: str, bodies: list[bytes], start, deadline: float, results) -> None:
    """One load-generator process: post its bodies over one keep-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Content-Type": "text/csv", "Authorization": f"Bearer {token}"}
    totals: Counter = Counter()
    statuses: Counter = Counter()
    records = 0
    error = ""
    conn.connect()  # before the start, so that `load` sees which worker holds the connection
    start.wait()
    began = time.perf_counter()
    try:
        for body in bodies:
            if time.time() > deadline:
                break
            conn.request("POST", PATH, body, headers)
            response = conn.getresponse()
            data = response.read()
            statuses[response.status] += 1
            if response.status == 200:
                ingest_common.add_response(totals, json.loads(data))
                records += RECORDS_PER_BATCH
            elif not error:
                error = f"{response.status}: {data[:300]!r}"
    except Exception as exc:  # reported to the parent, which fails the figure
        error = f"{type(exc).__name__}: {exc}"
    ended = time.perf_counter()
    conn.close()
    results.put(
        {
            "records": records,
            "totals": dict(totals),
            "statuses": dict(statuses),
            "error": error,
            "began": began,
            "ended": ended,
        }
    )


def load(port: int, token: str, bodies: list[bytes]) -> tuple[int, float, Counter, list[str], Counter, int]:
    """Post all bodies from CLIENTS processes; (records answered 200, seconds, figures, errors, statuses,
    starts drawn again). The clients connect first; while one worker holds every connection
    (`harness.on_one_worker`), they are stopped and started again, at most REDRAWS times."""
    from django.db import connections

    connections.close_all()  # the children are forked: no shared database connection
    ctx = multiprocessing.get_context("fork")
    redrawn = 0
    while True:
        start, results = ctx.Event(), ctx.Queue()
        deadline = time.time() + TIME_LIMIT
        procs = [
            ctx.Process(target=client, args=(port, token, bodies[i::CLIENTS], start, deadline, results))
            for i in range(CLIENTS)
        ]
        for proc in procs:
            proc.start()
        time.sleep(0.5)  # every client connected and waiting
        if redrawn < REDRAWS and harness.on_one_worker(port):
            for proc in procs:
                proc.terminate()
                proc.join(timeout=30)
            redrawn += 1
            continue
        break
    start.set()
    reports = [results.get(timeout=TIME_LIMIT + 180) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
    seconds = max(r["ended"] for r in reports) - min(r["began"] for r in reports)
    totals: Counter = Counter()
    statuses: Counter = Counter()
    for r in reports:
        totals.update(r["totals"])
        statuses.update(r["statuses"])
    records = sum(r["records"] for r in reports)
    return records, seconds, totals, [r["error"] for r in reports if r["error"]], statuses, redrawn


def smoke(port: int, token: str) -> None:
    body = datasets.generate_batch(3, seed=99, batch_index=0, day=datasets.datetime.now(datasets.UTC).date()).body
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", PATH, body, {"Content-Type": "text/csv", "Authorization": f"Bearer {token}"})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    if response.status != 200:
        raise MissingPart(f"POST {PATH} answered {response.status}: {data[:300]!r}")


def body(figures: Figures) -> None:
    harness.setup_django()
    from django.urls import Resolver404, resolve

    harness.need("warmup.counters", "get_store")
    try:
        resolve(PATH)
    except Resolver404:
        raise MissingPart(f"no view at {PATH} (webhooks/urls.py)") from None

    tenant, token, ip_ids = ingest_common.setup_tenant()
    day = tenant.today()
    log(f"generating {BATCHES} batches of {RECORDS_PER_BATCH} records")
    batches = datasets.generate_batches(BATCHES, records=RECORDS_PER_BATCH, day=day)
    bodies = [b.body for b in batches]
    expected: Counter = Counter()
    for batch in batches:
        expected.update(batch.expected())
    rates, csv_rates, problems, details, redraws = [], [], [], {}, 0
    with harness.gunicorn("warmup_portal.wsgi:application", log_name="gunicorn-portal-csv") as port:
        smoke(port, token)
        # Warm-up (not timed; its counts are flushed below): every worker has served bodies, filled its
        # caches and opened its Redis connections before the first timed run.
        load(port, token, bodies[: CLIENTS * 4])
        for run in range(RUNS):
            harness.flush_redis()  # every run counts every record
            # The baseline before and after the load, averaged: the machine's load may change meanwhile.
            rows, csv_before = datasets.csv_reader_pass(bodies)
            records, seconds, responses, errors, statuses, redrawn = load(port, token, bodies)
            _, csv_after = datasets.csv_reader_pass(bodies)
            csv_seconds = (csv_before + csv_after) / 2
            totals = ingest_common.counted_totals(ip_ids, {day})
            problems = [f"client: {e}" for e in errors]
            if records < rows:
                problems.append(
                    f"only {records} of {rows} records posted in {TIME_LIMIT} s (statuses {dict(statuses)})"
                )
            else:
                problems += ingest_common.check_counts(expected, responses, totals, records)
            rates.append(records / seconds)
            csv_rates.append(rows / csv_seconds)
            redraws += redrawn
            details = {"statuses": dict(statuses), "records": records, "redrawn": redraws}
            log(f"run {run + 1}/{RUNS}: HTTP {records / seconds:,.0f} records/s, csv.reader {rows / csv_seconds:,.0f}")
            if problems:
                break

    rate, csv_rate = median(rates), median(csv_rates)
    # Each run pairs the two measures taken back to back: the median of the ratios resists load from
    # other processes on the machine better than a ratio of medians.
    ratio = median([r / c for r, c in zip(rates, csv_rates, strict=True)])
    extra = {
        "runs": [round(r) for r in rates],
        "csv_runs": [round(r) for r in csv_rates],
        "ratio_runs": [round(r / c, 3) for r, c in zip(rates, csv_rates, strict=True)],
        "clients": CLIENTS,
        "workers": f"{harness.GUNICORN_WORKERS} gthread x {harness.GUNICORN_THREADS}",
        **details,
    }
    if problems:
        extra["error"] = "; ".join(problems)[:1000]
    figures.emit("ingest_http_records_per_s", round(rate), ok=rate >= 100_000 and not problems, baseline=None, **extra)
    figures.emit("ingest_http_ratio", round(ratio, 3), ok=ratio >= 0.25 and not problems, baseline=round(csv_rate))


if __name__ == "__main__":
    harness.run_script(FIGURES, body)
