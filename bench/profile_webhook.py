"""Where a single-event JSON webhook request spends its time: N requests through the full WSGI stack
(middleware, URL resolution, authentication, parsing, counting) in this process, under pyinstrument,
with the SQL queries of one request.

    .venv/bin/python bench/profile_webhook.py [--requests 2000]

Not part of run_all (it measures nothing against a target); writes bench/results/profile-webhook_json.txt
and .html. Uses the bench database and Redis like the benches.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import harness
import webhook_json_http


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    os.environ["PROFILE"] = "1"
    harness.setup_django()
    from django.db import connection
    from django.test import Client

    tenant, token, addresses, _ = webhook_json_http.setup_portal(50)
    client = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
    now = int(time.time())

    def post(n: int):
        event = {
            "type": "delivered",
            "ip": addresses[n % len(addresses)],
            "occurred_at": now,
            "recipient": f"user{n}@gmail.com",
            "event_id": f"profile-{n}",
        }
        return client.post(webhook_json_http.PATH, json.dumps(event), content_type="application/json")

    response = post(-1)
    if response.status_code != 200:
        raise SystemExit(f"POST answered {response.status_code}: {response.content[:300]!r}")
    statements: list[str] = []

    def record(execute, sql, params, many, context):
        statements.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        response = post(-2)
    print(f"one request: {response.status_code} {response.content[:200]!r}")
    print(f"one request: {len(statements)} SQL queries:")
    for sql in statements:
        print("   ", sql[:140])
    started = time.perf_counter()
    with harness.maybe_profile("webhook_json"):
        for n in range(args.requests):
            post(n)
    seconds = time.perf_counter() - started
    print(f"{args.requests} requests in {seconds:.2f} s in-process: {args.requests / seconds:.0f} requests/s")


if __name__ == "__main__":
    main()
