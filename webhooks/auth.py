"""Webhook authentication: a tenant's token, and its signature when the tenant requires one.

The token comes as `Authorization: Bearer <token>`, `X-Webhook-Token: <token>` or `?token=<token>`
(MailWizz and some MTAs can only be given a URL). Only its SHA-256 is stored: the request's token is
hashed, looked up by that hash, and the hash compared again in constant time. A tenant with a signing
secret also requires `X-Warmup-Signature: t=<unix seconds>,v1=<hex>` where v1 = HMAC-SHA256(secret,
"<t>.<raw body>"), within WEBHOOK_SIGNATURE_TOLERANCE_SECONDS of now; several v1 values may be given
while a secret is being rotated. Failures say what is wrong with the request, never which tenants exist.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime

from django.conf import settings
from django.http import HttpRequest
from django.utils import timezone

from domains.models import MTASource, Tenant, WebhookToken

Sender = Tenant | MTASource  # who a webhook token speaks for

SIGNATURE_HEADER = "HTTP_X_WARMUP_SIGNATURE"


class AuthenticationFailed(Exception):
    """The request is not authenticated; the message is safe to show to the caller."""


def token_from_request(request: HttpRequest) -> str:
    """The token the request carries ("" when none)."""
    authorization = request.META.get("HTTP_AUTHORIZATION", "")
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    header = request.META.get("HTTP_X_WEBHOOK_TOKEN", "").strip()
    if header:
        return header
    return request.GET.get("token", "").strip()


def sender_for_token(token: str) -> Sender:
    """The tenant (or MTA source) an active token belongs to; AuthenticationFailed otherwise (no cache)."""
    return sender_for_digest(token_digest(token))


def token_digest(token: str) -> str:
    """The stored form of a token (its SHA-256); AuthenticationFailed when there is no token."""
    if not token:
        raise AuthenticationFailed(
            "missing webhook token (send 'Authorization: Bearer <token>', 'X-Webhook-Token' or '?token=')"
        )
    return WebhookToken.hash(token)


def sender_for_digest(digest: str) -> Sender:
    """The tenant or MTA source of the active token with this digest; AuthenticationFailed otherwise.

    An MTA source comes with its listed tenants and its home tenant loaded (one query each, cached with
    the token by `webhooks.cache`)."""
    found = (
        WebhookToken.objects.active()
        .select_related("tenant", "mta_source__home_tenant")
        .filter(token_hash=digest)
        .only("token_hash", "tenant", "mta_source")
        .first()
    )
    # The lookup is by hash (an index), so its timing says nothing about the token; the comparison
    # below is the one that must not leak, and compare_digest makes it constant time.
    if found is None or not hmac.compare_digest(found.token_hash, digest):
        raise AuthenticationFailed("invalid webhook token")
    if found.tenant is not None:
        return found.tenant
    source = found.mta_source
    source.listed = list(source.tenants.all())
    return source


def verify_signature(secret: str, header: str, body: bytes, now: datetime | None = None) -> None:
    """Check an X-Warmup-Signature header against the raw body; AuthenticationFailed says why not."""
    if not header:
        raise AuthenticationFailed("missing X-Warmup-Signature header (t=<unix seconds>,v1=<hex>)")
    timestamp, candidates = "", []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t":
            timestamp = value.strip()
        elif name == "v1" and value.strip():
            candidates.append(value.strip())
    if not (timestamp.isascii() and timestamp.isdigit()) or not candidates:
        raise AuthenticationFailed("malformed X-Warmup-Signature header (expected t=<unix seconds>,v1=<hex>)")
    now = now or timezone.now()
    if abs(now.timestamp() - int(timestamp)) > settings.WEBHOOK_SIGNATURE_TOLERANCE_SECONDS:
        raise AuthenticationFailed("X-Warmup-Signature timestamp is outside the allowed tolerance")
    expected = sign(secret, timestamp, body)
    if not any(hmac.compare_digest(expected, candidate.lower().encode()) for candidate in candidates):
        raise AuthenticationFailed("X-Warmup-Signature does not match the body")


def sign(secret: str, timestamp: str | int, body: bytes) -> bytes:
    """The hex v1 signature (bytes) of a body at a time."""
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest().encode()


def check_signature(sender: Sender, request: HttpRequest, body: bytes) -> None:
    """A tenant with a signing secret requires the signature (an MTA source authenticates by token)."""
    secret = getattr(sender, "webhook_signing_secret", "")
    if secret:
        verify_signature(secret, request.META.get(SIGNATURE_HEADER, ""), body)
