"""The webhook fast path: ingestion requests go straight to their view, past the rest of the middleware.

Webhooks authenticate themselves (a tenant token, and a signature when the tenant asks for one), are
exempt from CSRF and never use sessions, users or messages: PRODUCT.md section 10 lets the hot path
skip them. This middleware comes first. What still holds on the fast path:

- the Host header is validated (400 outside ALLOWED_HOSTS), as CommonMiddleware would have done;
- the HTTPS redirect: a path SECURE_REDIRECT_EXEMPT does not exempt (the settings exempt the webhooks,
  since MTAs often post over plain HTTP inside a private network) goes through the whole stack when
  the request is not secure, so that SecurityMiddleware redirects it as before.

SecurityMiddleware's response headers (HSTS, nosniff, referrer and opener policies) speak to browsers;
the senders of webhooks are MTAs, so the fast path does not spend a tenth of its time adding them.
Only paths that resolve to a view marked with `webhooks.views.fast_path` take this way; every other
request goes through the whole stack.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.urls import Resolver404, resolve

PREFIX = "/api/v1/webhooks/"

View = Callable[[HttpRequest], HttpResponse]


class WebhookFastPathMiddleware:
    def __init__(self, get_response: View):
        self.get_response = get_response
        self.redirect = settings.SECURE_SSL_REDIRECT
        self.redirect_exempt = [re.compile(pattern) for pattern in settings.SECURE_REDIRECT_EXEMPT]
        # Exact paths known to resolve to a fast-path view (there are only a handful): (view, whether
        # SecurityMiddleware would redirect the path when the request is not secure).
        self.views: dict[str, tuple[View, bool]] = {}

    def __call__(self, request: HttpRequest) -> HttpResponse:
        path = request.path_info
        if not path.startswith(PREFIX):
            return self.get_response(request)
        known = self.views.get(path)
        if known is None:
            known = self._resolve(request)
            if known is None:
                return self.get_response(request)
        view, redirects = known
        if redirects and not request.is_secure():
            return self.get_response(request)  # SecurityMiddleware redirects it to HTTPS
        request.get_host()  # DisallowedHost (400) for a Host outside ALLOWED_HOSTS
        return view(request)

    def _resolve(self, request: HttpRequest) -> tuple[View, bool] | None:
        try:
            match = resolve(request.path_info)
        except Resolver404:
            return None
        if match.args or match.kwargs or not getattr(match.func, "webhook_fast_path", False):
            return None
        # SecurityMiddleware matches the exemptions against request.path without its leading slash.
        path = request.path.lstrip("/")
        redirects = self.redirect and not any(pattern.search(path) for pattern in self.redirect_exempt)
        known = self.views[request.path_info] = (match.func, redirects)
        return known
