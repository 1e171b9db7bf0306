"""The project's own endpoints: `/healthz` for probes and `/metrics` for Prometheus."""

import hmac
import importlib.util
import ipaddress

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe
from prometheus_client import CONTENT_TYPE_LATEST

from warmup import health, metrics

# Importing webhooks.metrics registers its counters in this process's registry (the dependency on
# the webhooks app belongs here, where the project wires its apps, not in warmup).
if importlib.util.find_spec("webhooks.metrics") is not None:
    importlib.import_module("webhooks.metrics")


@never_cache
@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    report = health.run_checks()
    return JsonResponse(report, status=200 if health.healthy(report) else 503)


def metrics_allowed(request: HttpRequest) -> bool:
    """Bearer METRICS_TOKEN when it is set; otherwise loopback callers only."""
    token = settings.METRICS_TOKEN
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    # "::ffff:127.0.0.1" from a dual-stack listener is loopback too.
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


@never_cache
@require_safe
def metrics_view(request: HttpRequest) -> HttpResponse:
    if not metrics_allowed(request):
        return HttpResponse(
            "Forbidden: send 'Authorization: Bearer <METRICS_TOKEN>' (or, with no token set, call from loopback).\n",
            status=403,
            content_type="text/plain",
        )
    return HttpResponse(metrics.render(), content_type=CONTENT_TYPE_LATEST)
