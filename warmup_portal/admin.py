"""The admin site of the portal: Django's site plus its portal-wide pages (the dashboard, "add domain with IP"
and "MTA configurations").

`PortalAdminConfig` replaces `django.contrib.admin` in INSTALLED_APPS so that `admin.site` (and every
`@admin.register`) is a `PortalAdminSite`. The pages themselves live in `warmup/admin_views.py`; this module
only wires them in, and imports no model at import time because it is loaded while the app registry fills.
"""

from django.contrib import admin
from django.contrib.admin.apps import AdminConfig
from django.urls import path


class PortalAdminSite(admin.AdminSite):
    site_header = "Warmup Portal"
    site_title = "Warmup Portal"
    index_title = "Operations"
    index_template = "admin/portal_index.html"

    def get_urls(self):
        from warmup import admin_views

        # Before Django's own patterns: the site ends with a catch-all that would shadow them.
        return [
            path("dashboard/", self.admin_view(admin_views.dashboard_view), {"site": self}, name="warmup_dashboard"),
            path("add-domain/", self.admin_view(admin_views.add_domain_view), {"site": self}, name="warmup_add_domain"),
            path(
                "mta-configs/", self.admin_view(admin_views.mta_configs_view), {"site": self}, name="warmup_mta_configs"
            ),
        ] + super().get_urls()


class PortalAdminConfig(AdminConfig):
    default_site = "warmup_portal.admin.PortalAdminSite"
