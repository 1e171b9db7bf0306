"""The portal's API (v1): monitoring, statistics, plan actions, forecast, MTA configuration.

Included at /api/v1/. Paths have no trailing slash, as PRODUCT.md section 7 writes them; `<address>`
takes any IPv4 or IPv6 spelling (colons are fine in a path segment).
"""

from django.urls import path

from . import api

urlpatterns = [
    path("warmup", api.WarmupStatusView.as_view(), name="api-warmup"),
    path("ips/<str:address>/stats", api.IPStatsView.as_view(), name="api-ip-stats"),
    path("domains", api.DomainsView.as_view(), name="api-domains"),
    # <str:action>, not <slug:>: an unknown action gets the API's JSON 400 naming it, not an HTML 404.
    path("plans/<str:address>/<str:action>", api.PlanActionView.as_view(), name="api-plan-action"),
    path("forecast", api.ForecastView.as_view(), name="api-forecast"),
    path("pmta-config", api.PmtaConfigView.as_view(), name="api-pmta-config"),
    path("kumomta-config", api.KumomtaConfigView.as_view(), name="api-kumomta-config"),
]
