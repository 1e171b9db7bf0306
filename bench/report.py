"""Render bench results (JSON lines) as the Markdown table of bench/README.md.

    .venv/bin/python bench/report.py [bench/results/latest.jsonl ...]

With several files (several `make bench` runs), each figure shows the value of the last file and the
range over all of them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DEFAULT = Path(__file__).resolve().parent / "results" / "latest.jsonl"


def load(path: Path) -> dict[str, dict]:
    records = {}
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            records[record["bench"]] = record
    return records


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3g}" if value < 10 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def main(argv: list[str]) -> None:
    runs = [load(Path(p)) for p in (argv or [str(DEFAULT)])]
    last = runs[-1]
    print("| figure | target | measured | baseline | range over runs | ok |")
    print("|---|---|---|---|---|---|")
    for name, record in last.items():
        values = [r[name]["value"] for r in runs if name in r and isinstance(r[name].get("value"), int | float)]
        spread = f"{fmt(min(values))} - {fmt(max(values))}" if len(values) > 1 else ""
        ok = {True: "yes", False: "**no**", None: "(info)"}[record.get("ok")]
        measured = f"{fmt(record.get('value'))} {record.get('unit') or ''}".strip()
        if record.get("error"):
            measured += f" (error: {record['error'][:120]})"
        target, baseline = record.get("target") or "", fmt(record.get("baseline"))
        print(f"| `{name}` | {target} | {measured} | {baseline} | {spread} | {ok} |")


if __name__ == "__main__":
    main(sys.argv[1:])
