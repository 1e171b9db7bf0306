"""Ingestion endpoints: thin callers of auth, the parsers and the pipeline (PRODUCT.md section 6).

Plain Django views, not DRF: this is the hot path. Answers: 200 with the figures, 400 for a body that
cannot be read at all, 401 for missing or wrong credentials, 405 for anything but POST, 413 over
WEBHOOK_MAX_BODY_BYTES, 429 over the tenant's rate limit (`ratelimit.py`), 503 when the counter store
(or the database) cannot be reached, in which case nothing was counted and the sender retries.
Never a 2xx for an event that was not durably counted.

The token and the tenant's IPs come from per-process caches (`cache.py`) and the requests skip the
session, authentication, CSRF and message middleware (`middleware.py`): in the steady state a
single event costs no query and one Redis round trip (the counting script, which also counts the
request in its tenant's rate-limit window).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from django.conf import settings
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from domains.models import MTASource
from warmup.counters import CounterStoreUnavailable, WindowFull
from webhooks import cache, ratelimit
from webhooks.auth import AuthenticationFailed, check_signature, token_from_request
from webhooks.ingest import ingest, ingest_shared
from webhooks.parsers import Batch, UnparseableBody, kumomta, mailwizz, normalised, powermta

logger = logging.getLogger(__name__)


def _json(status: int, payload: dict, **headers: str) -> HttpResponse:
    response = HttpResponse(json.dumps(payload), status=status, content_type="application/json")
    for name, value in headers.items():
        response[name] = value
    return response


def receive(request: HttpRequest, source: str, parse: Callable[[bytes, str], Batch]) -> HttpResponse:
    """Authenticate, read, parse, count: the whole of one webhook request."""
    if request.method != "POST":
        return _json(405, {"error": "use POST"}, Allow="POST")
    limit = settings.WEBHOOK_MAX_BODY_BYTES
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return _json(400, {"error": "Content-Length is not a number"})
    if declared > limit:
        return _json(413, {"error": f"body over the limit of {limit} bytes"})
    try:
        sender = cache.sender_for_token(token_from_request(request))
        body = request.read(limit + 1)  # never trust the declared length alone
        if len(body) > limit:
            return _json(413, {"error": f"body over the limit of {limit} bytes"})
        check_signature(sender, request, body)
    except AuthenticationFailed as exc:
        return _json(401, {"error": str(exc)})
    except DatabaseError:
        logger.exception("webhook authentication: database unavailable")
        return _json(503, {"error": "service unavailable, retry later"}, **{"Retry-After": "30"})

    now = time.time()
    try:
        batch = parse(body, request.META.get("CONTENT_TYPE", ""))
        if isinstance(sender, MTASource):
            window = ratelimit.window_for(sender.pk, now=now, scope="m")
            result = ingest_shared(sender, batch, cache.context_for, window)
        else:
            result = ingest(cache.context_for(sender), batch, ratelimit.window_for(sender.pk, now=now))
    except WindowFull:
        return _json(
            429,
            {"error": f"over {settings.WEBHOOK_RATE_LIMIT_PER_MINUTE} requests a minute; retry later"},
            **{"Retry-After": str(ratelimit.retry_after(now=now))},
        )
    except UnparseableBody as exc:
        return _json(400, {"error": str(exc)})
    except RecursionError:
        return _json(400, {"error": "body is nested too deeply"})
    except CounterStoreUnavailable as exc:
        logger.warning("webhook %s: counter store unavailable: %s", source, exc)
        return _json(503, {"error": "counter store unavailable, nothing counted; retry later"}, **{"Retry-After": "30"})
    except DatabaseError:
        logger.exception("webhook %s: database unavailable", source)
        return _json(503, {"error": "database unavailable; retry later"}, **{"Retry-After": "30"})
    return _json(200, result.as_json())


def fast_path(view: Callable[[HttpRequest], HttpResponse]) -> Callable[[HttpRequest], HttpResponse]:
    """Mark a view that `middleware.WebhookFastPathMiddleware` may call directly (it authenticates itself)."""
    view.webhook_fast_path = True
    return view


@fast_path
@csrf_exempt
def powermta_webhook(request: HttpRequest) -> HttpResponse:
    return receive(request, powermta.SOURCE, powermta.parse_body)


@fast_path
@csrf_exempt
def kumomta_webhook(request: HttpRequest) -> HttpResponse:
    return receive(request, kumomta.SOURCE, kumomta.parse_body)


@fast_path
@csrf_exempt
def mailwizz_webhook(request: HttpRequest) -> HttpResponse:
    return receive(request, mailwizz.SOURCE, mailwizz.parse_body)


@fast_path
@csrf_exempt
def events_webhook(request: HttpRequest) -> HttpResponse:
    return receive(request, normalised.SOURCE, normalised.parse_body)
