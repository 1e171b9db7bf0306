"""Single-event JSON webhooks through HTTP: the portal's `events/` endpoint vs the baseline app.

Both are served by gunicorn the same way (2 gthread workers, `harness.gunicorn`) and loaded by `wrk`
(2 threads, 4 keep-alive connections, loopback, fixed duration) with a Lua script that posts one
event per request, each with its own event id. Runs alternate baseline / portal; each figure is the
median. A run in which one gunicorn worker held every connection is taken again (`run_wrk`).
Afterwards the portal's counter store must hold exactly the events wrk saw answered with 2xx (give or
take the requests in flight when wrk stopped).

Target (PRODUCT.md section 10): portal >= 0.75 x baseline requests/s.
"""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import harness
from harness import QUICK, RUNS, Figures, MissingPart, log, median

FIGURES = Figures(
    {
        "webhook_json_http_ratio": ("x baseline", ">= 0.75"),
        "webhook_json_http_requests_per_s": ("requests/s", "(informative; baseline in 'baseline')"),
    }
)
PATH = "/api/v1/webhooks/events/"
DURATION = 3 if QUICK else 6
# Short alternating runs: both servers see much the same load from the rest of the machine. Three
# pairs at least: one pair alone swings by 10 % either way.
PAIRS = max(RUNS, 3) if QUICK else max(RUNS, 5)
WARMUP_SECONDS = 1 if QUICK else 2
THREADS = 2
CONNECTIONS = 4
REDRAWS = 4  # see run_wrk
IP_COUNT = 50

LUA = r"""
local counter = 0
local threads = 0
local ips = {%(ips)s}
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(token)s"
request = function()
  counter = counter + 1
  local body = string.format(
    '{"type":"delivered","ip":"%%s","occurred_at":%(ts)d,"recipient":"user%%d.%%d@gmail.com","event_id":"%(prefix)s-%%d-%%d"}',
    ips[(counter %% #ips) + 1], tid, counter, tid, counter)
  return wrk.format(nil, "%(path)s", nil, body)
end
done = function(summary, latency, requests)
  io.write(string.format(
    'WRKJSON {"requests":%%d,"duration_us":%%d,"non2xx":%%d,"connect":%%d,"read":%%d,"write":%%d,' ..
    '"timeout":%%d,"p50_ms":%%.3f,"p99_ms":%%.3f}\n',
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.timeout, latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


def run_wrk(port: int, token: str, ips: list[str], duration: int, workdir: Path) -> dict:
    """One wrk run, taken again (at most REDRAWS times) while one worker holds every connection
    (`harness.on_one_worker`); the summary of the run kept (requests, non-2xx, errors, latency,
    requests/s), with `redrawn` (runs taken again) and `ok_all` (2xx answers of every run, counted too)."""
    ok_all = runs = 0
    while True:
        summary, one_worker = _run_wrk_once(port, token, ips, duration, workdir)
        ok_all += summary["ok_responses"]
        runs += 1
        if not one_worker or runs > REDRAWS:
            return {**summary, "redrawn": runs - 1, "ok_all": ok_all, "runs_all": runs}


def _run_wrk_once(port: int, token: str, ips: list[str], duration: int, workdir: Path) -> tuple[dict, bool]:
    """One wrk run: (its summary, whether one worker held every connection a third into it)."""
    script = workdir / f"post-{uuid.uuid4().hex[:8]}.lua"
    script.write_text(
        LUA
        % {
            "ips": ", ".join(f'"{ip}"' for ip in ips),
            "token": token,
            "ts": int(time.time()),
            "prefix": uuid.uuid4().hex[:12],
            "path": PATH,
        }
    )
    cmd = [
        "wrk",
        "-t",
        str(THREADS),
        "-c",
        str(CONNECTIONS),
        "-d",
        f"{duration}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}{PATH}",
    ]
    one_worker = []
    probe = threading.Timer(duration / 3, lambda: one_worker.append(harness.on_one_worker(port)))
    probe.start()
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    probe.join()
    for line in result.stdout.splitlines():
        if line.startswith("WRKJSON "):
            summary = json.loads(line.removeprefix("WRKJSON "))
            summary["rps"] = summary["requests"] / (summary["duration_us"] / 1e6)
            summary["ok_responses"] = summary["requests"] - summary["non2xx"]
            return summary, any(one_worker)
    raise RuntimeError(f"wrk gave no summary: {result.stdout[-400:]} {result.stderr[-400:]}")


def smoke(port: int, token: str, ip: str) -> None:
    """One request before loading: the endpoint must answer 200 with the response shape."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    body = json.dumps(
        {
            "type": "delivered",
            "ip": ip,
            "occurred_at": int(time.time()),
            "recipient": "smoke@gmail.com",
            "event_id": "smoke-" + uuid.uuid4().hex,
        }
    )
    conn.request("POST", PATH, body, {"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    if response.status != 200:
        raise MissingPart(f"POST {PATH} answered {response.status}: {data[:300]!r}")


def setup_portal(ip_count: int):
    """A tenant with its IPs and a webhook token; (tenant, token, addresses, ip ids)."""
    from domains.models import IP, Domain, Tenant, WebhookToken

    harness.reset_state()
    tenant = Tenant.objects.create(name="Bench", slug="bench", time_zone="UTC")
    addresses = [f"198.18.{i // 250}.{i % 250 + 1}" for i in range(ip_count)]
    domains = Domain.objects.bulk_create(
        [Domain(tenant=tenant, name=f"mail{i + 1}.bench-mail.com", status="warming") for i in range(ip_count)]
    )
    ips = IP.objects.bulk_create(
        [IP(tenant=tenant, domain=d, address=a, status="warming") for d, a in zip(domains, addresses, strict=True)]
    )
    _, token = WebhookToken.issue(tenant, label="bench")
    return tenant, token, addresses, [ip.pk for ip in ips]


def counted_delivered(ip_ids: list[int], day) -> int:
    from warmup.counters import get_store

    store = get_store()
    return sum(store.read(ip_id, day).get("delivered", 0) for ip_id in ip_ids)


def body(figures: Figures) -> None:
    if shutil.which("wrk") is None:
        raise MissingPart("wrk is not installed (apt-get install wrk)")
    harness.setup_django()
    from django.urls import Resolver404, resolve

    harness.need("warmup.counters", "get_store")
    try:
        resolve(PATH)
    except Resolver404:
        raise MissingPart(f"no view at {PATH} (webhooks/urls.py)") from None

    tenant, token, addresses, ip_ids = setup_portal(IP_COUNT)
    baseline_env = harness.bench_environment()
    baseline_env["DJANGO_SETTINGS_MODULE"] = "baseline_app.settings"
    base_runs, portal_runs = [], []
    with (
        tempfile.TemporaryDirectory() as tmp,
        harness.gunicorn("baseline_app.wsgi:application", env=baseline_env, log_name="gunicorn-baseline") as bport,
        harness.gunicorn("warmup_portal.wsgi:application", log_name="gunicorn-portal") as pport,
    ):
        workdir = Path(tmp)
        smoke(pport, token, addresses[0])
        before = counted_delivered(ip_ids, tenant.today())
        log("warming both servers up")
        run_wrk(bport, token, addresses, WARMUP_SECONDS, workdir)
        warm = run_wrk(pport, token, addresses, WARMUP_SECONDS, workdir)
        portal_answered, portal_wrk_runs = warm["ok_all"], warm["runs_all"]
        for run in range(PAIRS):
            base = run_wrk(bport, token, addresses, DURATION, workdir)
            portal = run_wrk(pport, token, addresses, DURATION, workdir)
            log(
                f"run {run + 1}/{PAIRS}: baseline {base['rps']:.0f} req/s, portal {portal['rps']:.0f} req/s "
                f"(non-2xx {portal['non2xx']}, p99 {portal['p99_ms']:.1f} ms)"
            )
            base_runs.append(base)
            portal_runs.append(portal)
            portal_answered += portal["ok_all"]
            portal_wrk_runs += portal["runs_all"]
        time.sleep(1)  # requests in flight when wrk stopped
        counted = counted_delivered(ip_ids, tenant.today()) - before

    base_rps = median([r["rps"] for r in base_runs])
    portal_rps = median([r["rps"] for r in portal_runs])
    # Each run pairs the two measures taken back to back: the median of the ratios resists load from
    # other processes on the machine better than a ratio of medians.
    ratio = median([p["rps"] / b["rps"] for p, b in zip(portal_runs, base_runs, strict=True)])
    non2xx = sum(r["non2xx"] for r in portal_runs)
    socket_errors = sum(r["connect"] + r["read"] + r["write"] + r["timeout"] for r in portal_runs)
    in_flight = CONNECTIONS * portal_wrk_runs
    count_ok = portal_answered <= counted <= portal_answered + in_flight
    problems = []
    if non2xx:
        problems.append(f"{non2xx} non-2xx responses")
    if not count_ok:
        problems.append(f"counter store holds {counted} delivered, wrk saw {portal_answered} answered")
    extra = {
        "runs": [round(r["rps"]) for r in portal_runs],
        "baseline_runs": [round(r["rps"]) for r in base_runs],
        "ratio_runs": [round(p["rps"] / b["rps"], 3) for p, b in zip(portal_runs, base_runs, strict=True)],
        "p99_ms": median([r["p99_ms"] for r in portal_runs]),
        "baseline_p99_ms": median([r["p99_ms"] for r in base_runs]),
        "counted": counted,
        "answered_2xx": portal_answered,
        "socket_errors": socket_errors,
        # Runs taken again because one worker held every connection (harness.on_one_worker).
        "redrawn": sum(r["redrawn"] for r in base_runs + portal_runs),
        "load": f"wrk -t{THREADS} -c{CONNECTIONS} -d{DURATION}s",
    }
    if problems:
        extra["error"] = "; ".join(problems)
    figures.emit(
        "webhook_json_http_ratio", round(ratio, 3), ok=ratio >= 0.75 and not problems, baseline=round(base_rps), **extra
    )
    figures.emit(
        "webhook_json_http_requests_per_s",
        round(portal_rps),
        ok=None if not problems else False,
        baseline=round(base_rps),
    )


if __name__ == "__main__":
    harness.run_script(FIGURES, body)
