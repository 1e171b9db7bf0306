"""Applies increments through the configured counter store; prints how many were counted.

Usage: apply_increments.py IP_ID DAY[,DAY...] BATCHES BATCH_SIZE KEY_PREFIX [STOP_FILE]
Each increment adds sent=1 for a rotating day; every other one carries a de-duplication key
KEY_PREFIX<n> (n running over the batch positions, so processes given the same prefix collide).
With STOP_FILE, keeps going until that file exists (BATCHES is then a minimum).
"""

import sys
from datetime import date
from pathlib import Path

import django

django.setup()

from warmup.counters import Increment, get_store  # noqa: E402


def main() -> None:
    ip_id, days, batches, size, prefix = sys.argv[1:6]
    stop_file = Path(sys.argv[6]) if len(sys.argv) > 6 else None
    days = [date.fromisoformat(d) for d in days.split(",")]
    store = get_store()
    counted = {d.isoformat(): 0 for d in days}
    n = 0
    batch_no = 0
    while batch_no < int(batches) or (stop_file is not None and not stop_file.exists()):
        increments = []
        for position in range(int(size)):
            n += 1
            key = f"{prefix}{batch_no}-{position}" if position % 2 else None
            increments.append(Increment(int(ip_id), days[n % len(days)], {"sent": 1}, "gmail", key))
        for inc, ok in zip(increments, store.apply(increments), strict=True):
            counted[inc.day.isoformat()] += ok
        batch_no += 1
    print(" ".join(f"{d}={c}" for d, c in counted.items()), flush=True)


if __name__ == "__main__":
    main()
