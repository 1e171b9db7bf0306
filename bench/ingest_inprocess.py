"""PowerMTA CSV ingestion in-process (parse, normalise, de-duplicate, attribute, count into Redis) vs a
bare `csv.reader` pass over the same bytes, in the same run.

Batches of 1,000 records (bench/datasets.py), 50 IPs; the Redis db is emptied before each run so that
every run counts every record. After each run the counter store must hold exactly what the records add.

Target (PRODUCT.md section 10): pipeline >= 0.35 x csv.reader records/s.
"""

from __future__ import annotations

import time
from collections import Counter

import datasets
import harness
import ingest_common
from harness import QUICK, RUNS, Figures, log, median

FIGURES = Figures(
    {
        "ingest_inprocess_ratio": ("x csv.reader", ">= 0.35"),
        "ingest_inprocess_records_per_s": ("records/s", "(informative; csv.reader in 'baseline')"),
    }
)
BATCHES = 20 if QUICK else 100
RECORDS_PER_BATCH = 1000


def body(figures: Figures) -> None:
    harness.setup_django()
    run_pipeline = ingest_common.pipeline()
    tenant, _, ip_ids = ingest_common.setup_tenant()
    day = tenant.today()
    log(f"generating {BATCHES} batches of {RECORDS_PER_BATCH} records")
    batches = datasets.generate_batches(BATCHES, records=RECORDS_PER_BATCH, day=day)
    bodies = [b.body for b in batches]
    expected: Counter = Counter()
    for batch in batches:
        expected.update(batch.expected())
    records = BATCHES * RECORDS_PER_BATCH

    # An untimed pass over every body (its counts are flushed by the first run): imports, the first
    # connection, lazily built tables, and the minute cache of PowerMTA times. The data set spreads its
    # records over a whole day, so a cold process meets a new minute every 70 records, where a server
    # meets one a minute: the cold first run of QUICK (20 batches) measured 0.324, 0.36 - 0.38 warm.
    for data in bodies:
        run_pipeline(tenant, data)
    pipeline_rates, csv_rates, problems = [], [], []
    for run in range(RUNS):
        harness.flush_redis()
        responses: Counter = Counter()
        csv_seconds = seconds = 0.0
        with harness.maybe_profile("ingest_inprocess") if run == 0 else _nothing():
            # Body by body, the baseline then the pipeline: both see the same load from the rest of
            # the machine, which a pass of each in turn would not.
            for data in bodies:
                rows, csv_body_seconds = datasets.csv_reader_pass([data])
                assert rows == RECORDS_PER_BATCH, rows
                csv_seconds += csv_body_seconds
                started = time.perf_counter()
                ingest_common.add_response(responses, run_pipeline(tenant, data))
                seconds += time.perf_counter() - started
        totals = ingest_common.counted_totals(ip_ids, {day})
        problems = ingest_common.check_counts(expected, responses, totals, records)
        csv_rates.append(records / csv_seconds)
        pipeline_rates.append(records / seconds)
        log(
            f"run {run + 1}/{RUNS}: pipeline {records / seconds:,.0f} records/s, "
            f"csv.reader {records / csv_seconds:,.0f} records/s"
        )
        if problems:
            break

    rate, csv_rate = median(pipeline_rates), median(csv_rates)
    # Each run pairs the two measures taken back to back: the median of the ratios resists load from
    # other processes on the machine better than a ratio of medians.
    ratio = median([r / c for r, c in zip(pipeline_rates, csv_rates, strict=True)])
    extra = {
        "records": records,
        "runs": [round(r) for r in pipeline_rates],
        "csv_runs": [round(r) for r in csv_rates],
        "ratio_runs": [round(r / c, 3) for r, c in zip(pipeline_rates, csv_rates, strict=True)],
    }
    if problems:
        extra["error"] = "; ".join(problems)
    figures.emit(
        "ingest_inprocess_ratio", round(ratio, 3), ok=ratio >= 0.35 and not problems, baseline=round(csv_rate), **extra
    )
    figures.emit(
        "ingest_inprocess_records_per_s", round(rate), ok=None if not problems else False, baseline=round(csv_rate)
    )


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


if __name__ == "__main__":
    harness.run_script(FIGURES, body)
