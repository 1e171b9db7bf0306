"""Admin of the inventory (tenants, domains) and the admin building blocks every app's admin uses.

`TenantScopedAdmin` is the one place tenant isolation is enforced in the admin: a staff user who belongs
to tenants sees and changes only their objects (changelists, change pages, autocomplete, foreign-key
choices, list filters); superusers see everything. `LargeTablePaginator` pages big tables without a full
COUNT. IPs are administered in `warmup/admin.py`, next to the warmup figures their list shows.
"""

from __future__ import annotations

import json
import logging

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import FieldDoesNotExist, PermissionDenied
from django.core.paginator import Paginator
from django.db import connections, models
from django.db.models import Count
from django.forms.models import BaseInlineFormSet
from django.http import HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.functional import cached_property
from django.utils.translation import ngettext

from .models import IP, Domain, MTASource, Tenant, WebhookToken

logger = logging.getLogger(__name__)

# Relations followed, in order, to find the tenant an object belongs to (see `tenant_path_for`).
_TENANT_VIA = ("tenant", "ip", "plan", "domain")


def tenant_path_for(model) -> str | None:
    """The ORM path from `model` to its Tenant: "" for Tenant itself, None for data of no tenant.

    Schedules, users and periodic tasks belong to no tenant and are left unscoped (their own permissions
    decide who sees them).
    """
    if model is Tenant:
        return ""
    for name in _TENANT_VIA:
        try:
            field = model._meta.get_field(name)
        except FieldDoesNotExist:
            continue
        if not (field.many_to_one or field.one_to_one) or not field.concrete:
            continue
        if field.related_model is Tenant:
            return name
        rest = tenant_path_for(field.related_model)
        if rest:
            return f"{name}__{rest}"
    return None


def scope_queryset(queryset: models.QuerySet, user, path: str | None = None) -> models.QuerySet:
    """Restrict a queryset to the tenants `user` may see (no-op for a superuser or tenant-less data).

    The tenants are a subquery, so scoping adds no query of its own.
    """
    if user.is_superuser:
        return queryset
    if path is None:
        path = tenant_path_for(queryset.model)
        if path is None:
            return queryset
    tenants = Tenant.objects.visible_to(user)
    if path == "":
        return queryset.filter(pk__in=tenants.values("pk"))
    return queryset.filter(**{f"{path}__in": tenants.values("pk")})


class TenantListFilter(admin.SimpleListFilter):
    """Filter by tenant, offering only the tenants the user may see (`tenant_path` set per admin)."""

    title = "tenant"
    parameter_name = "tenant"

    def lookups(self, request, model_admin):
        return [(str(t.pk), t.name) for t in Tenant.objects.visible_to(request.user).only("pk", "name")]

    def queryset(self, request, queryset):
        if self.value():
            path = getattr(self, "tenant_path", None) or tenant_path_for(queryset.model)
            return queryset.filter(**{f"{path}__pk": self.value()})
        return queryset


class TenantScopedAdmin(admin.ModelAdmin):
    """A ModelAdmin that shows a tenant member only their tenants' objects; superusers see all.

    `tenant_path` is the ORM path from the model to its tenant; by default it is found from the fields
    (`tenant`, `ip__tenant`, `plan__ip__tenant` ...). Foreign-key and many-to-many choices are scoped the
    same way, which also covers raw-id and autocomplete widgets (the latter query the related admin).
    """

    tenant_path: str | None = None

    def get_queryset(self, request):
        return scope_queryset(super().get_queryset(request), request.user, self.tenant_path)

    def _scoped_choices(self, db_field, request, kwargs):
        if "queryset" not in kwargs:
            queryset = self.get_field_queryset(None, db_field, request)
            if queryset is None:
                queryset = db_field.remote_field.model._default_manager.all()
            kwargs["queryset"] = scope_queryset(queryset, request.user)
        return kwargs

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        return super().formfield_for_foreignkey(db_field, request, **self._scoped_choices(db_field, request, kwargs))

    def formfield_for_manytomany(self, db_field, request, **kwargs):
        return super().formfield_for_manytomany(db_field, request, **self._scoped_choices(db_field, request, kwargs))


class SuperuserOnlyAdmin(admin.ModelAdmin):
    """A ModelAdmin for what spans tenants (MTA sources, the deferral rules): superusers only, members do not
    even see it in the index."""

    def has_module_permission(self, request) -> bool:
        return request.user.is_superuser

    def has_view_permission(self, request, obj=None) -> bool:
        return request.user.is_superuser

    def has_add_permission(self, request) -> bool:
        return request.user.is_superuser

    def has_change_permission(self, request, obj=None) -> bool:
        return request.user.is_superuser

    def has_delete_permission(self, request, obj=None) -> bool:
        return request.user.is_superuser


class TenantScopedInline:
    """The inline counterpart of `TenantScopedAdmin` (mix in before TabularInline/StackedInline)."""

    def get_queryset(self, request):
        return scope_queryset(super().get_queryset(request), request.user)

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if "queryset" not in kwargs:
            kwargs["queryset"] = scope_queryset(db_field.remote_field.model._default_manager.all(), request.user)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


class LargeTablePaginator(Paginator):
    """Pages a large table without a full COUNT (healthchecks' approach).

    Unfiltered, PostgreSQL's planner estimate (`pg_class.reltuples`) stands in for the count once the
    table is big enough for the estimate to matter. Filtered (a tenant, a date drill-down, a member's
    own tenants), at most ESTIMATE_FROM rows are counted: fewer is the exact count, otherwise the
    planner's estimate of the filtered rows (`EXPLAIN`, never below ESTIMATE_FROM) stands in for a
    COUNT that would read every matching row. Small or non-PostgreSQL tables are counted. The admin
    then shows "Show all" and page links from the estimate, which is what an operator needs.
    """

    ESTIMATE_FROM = 10_000

    def _estimate(self) -> int:
        query = self.object_list.query
        connection = connections[self.object_list.db]
        if connection.vendor != "postgresql" or query.where:
            return -1
        with connection.cursor() as cursor:
            cursor.execute("SELECT reltuples FROM pg_class WHERE relname = %s", [query.model._meta.db_table])
            row = cursor.fetchone()
        # -1 (never analysed) or a small figure: a real count is cheap enough then.
        return int(row[0]) if row else -1

    def _filtered_estimate(self) -> int:
        """The planner's row estimate for the filtered list (its ordering left out: it changes no count)."""
        queryset = self.object_list.order_by()
        sql, params = queryset.query.sql_with_params()
        with connections[queryset.db].cursor() as cursor:
            cursor.execute("EXPLAIN (FORMAT JSON) " + sql, params)
            plan = cursor.fetchone()[0]
        if isinstance(plan, str):
            plan = json.loads(plan)
        return int(plan[0]["Plan"]["Plan Rows"])

    @cached_property
    def count(self) -> int:
        estimate = self._estimate()
        if estimate >= self.ESTIMATE_FROM:
            return estimate
        if connections[self.object_list.db].vendor == "postgresql" and self.object_list.query.where:
            # A bounded count stops at ESTIMATE_FROM rows: exact for a small result, cheap for a big one.
            bounded = self.object_list.order_by()[: self.ESTIMATE_FROM].count()
            if bounded < self.ESTIMATE_FROM:
                return bounded
            return max(self.ESTIMATE_FROM, self._filtered_estimate())
        return super().count


# --- Tenants ---------------------------------------------------------------------------------------


class WebhookTokenInline(admin.TabularInline):
    """The tenant's webhook tokens, read-only: tokens are issued by rotation and only their prefix is kept."""

    model = WebhookToken
    fields = ("prefix", "label", "created_at", "revoked_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Tenant)
class TenantAdmin(TenantScopedAdmin):
    list_display = ("name", "slug", "time_zone", "domain_count", "ip_count", "active_tokens")
    search_fields = ("name", "slug")
    prepopulated_fields = {"slug": ("name",)}
    filter_horizontal = ("members",)
    inlines = (WebhookTokenInline,)
    actions = ("rotate_webhook_token",)
    fieldsets = (
        (None, {"fields": ("name", "slug", "time_zone")}),
        ("Access", {"fields": ("members",)}),
        ("Alerts and webhooks", {"fields": ("telegram_chat_id", "webhook_signing_secret")}),
    )

    def get_queryset(self, request):
        # Counted in the changelist's one query rather than per row; distinct because of the two joins.
        return (
            super()
            .get_queryset(request)
            .annotate(
                n_domains=Count("domains", distinct=True),
                n_ips=Count("ips", distinct=True),
                n_tokens=Count(
                    "webhook_tokens", filter=models.Q(webhook_tokens__revoked_at__isnull=True), distinct=True
                ),
            )
        )

    @admin.display(description="domains", ordering="n_domains")
    def domain_count(self, obj) -> int:
        return obj.n_domains

    @admin.display(description="IPs", ordering="n_ips")
    def ip_count(self, obj) -> int:
        return obj.n_ips

    @admin.display(description="active tokens", ordering="n_tokens")
    def active_tokens(self, obj) -> int:
        return obj.n_tokens

    def get_readonly_fields(self, request, obj=None):
        # Membership decides who sees a tenant: only a superuser grants it (and sees every user to pick from).
        return () if request.user.is_superuser else ("members",)

    def has_add_permission(self, request) -> bool:
        return request.user.is_superuser and super().has_add_permission(request)

    def has_delete_permission(self, request, obj=None) -> bool:
        return request.user.is_superuser and super().has_delete_permission(request, obj)

    def get_urls(self):
        return [
            path(
                "<path:object_id>/rotate-token/",
                self.admin_site.admin_view(self.rotate_token_view),
                name="domains_tenant_rotate_token",
            ),
        ] + super().get_urls()

    def _issue_token(self, request, tenant: Tenant) -> None:
        _, token = WebhookToken.issue(tenant, rotate=True)
        self.log_change(request, tenant, "Rotated the webhook token (older tokens revoked).")
        # Only the hash is stored: this message is the one time the token can be read.
        self.message_user(
            request,
            f"New webhook token for {tenant.name} (copy it now, it will not be shown again): {token}",
            messages.SUCCESS,
        )

    @admin.action(description="Rotate the webhook token (revoke the others)", permissions=["change"])
    def rotate_webhook_token(self, request, queryset):
        tenants = list(queryset)
        for tenant in tenants:
            self._issue_token(request, tenant)
        self.message_user(
            request,
            ngettext(
                "%(count)d tenant has a new webhook token.", "%(count)d tenants have a new webhook token.", len(tenants)
            )
            % {"count": len(tenants)},
            messages.INFO,
        )

    def rotate_token_view(self, request, object_id):
        """The change page's "Rotate webhook token" button (POST only: it revokes credentials)."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        tenant = get_object_or_404(self.get_queryset(request), pk=object_id)
        if not self.has_change_permission(request, tenant):
            raise PermissionDenied
        self._issue_token(request, tenant)
        return HttpResponseRedirect(reverse("admin:domains_tenant_change", args=[tenant.pk]))


# --- MTA sources -----------------------------------------------------------------------------------


@admin.register(MTASource)
class MTASourceAdmin(SuperuserOnlyAdmin):
    """Installation-level senders (one MTA posting for several tenants): superusers only."""

    list_display = ("name", "home_tenant", "tenant_list", "active_tokens")
    list_select_related = ("home_tenant",)
    filter_horizontal = ("tenants",)
    inlines = (WebhookTokenInline,)
    actions = ("rotate_webhook_token",)

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .prefetch_related("tenants")
            .annotate(
                n_tokens=Count(
                    "webhook_tokens", filter=models.Q(webhook_tokens__revoked_at__isnull=True), distinct=True
                )
            )
        )

    @admin.display(description="tenants")
    def tenant_list(self, obj) -> str:
        return ", ".join(tenant.name for tenant in obj.tenants.all())

    @admin.display(description="active tokens", ordering="n_tokens")
    def active_tokens(self, obj) -> int:
        return obj.n_tokens

    @admin.action(description="Rotate the webhook token (revoke the others)", permissions=["change"])
    def rotate_webhook_token(self, request, queryset):
        for source in queryset:
            _, token = WebhookToken.issue(mta_source=source, rotate=True)
            self.log_change(request, source, "Rotated the webhook token (older tokens revoked).")
            # Only the hash is stored: this message is the one time the token can be read.
            self.message_user(
                request,
                f"New webhook token for {source.name} (copy it now, it will not be shown again): {token}",
                messages.SUCCESS,
            )


# --- Domains ---------------------------------------------------------------------------------------


class IPInlineForm(forms.ModelForm):
    class Meta:
        model = IP
        fields = ("address", "hostname", "mta_source_name", "status", "weight")

    def clean(self):
        cleaned = super().clean()
        # The tenant is not a field of this form, so Django skips the (tenant, source name) constraint.
        name = cleaned.get("mta_source_name")
        if name and (
            IP.objects.filter(tenant_id=self.instance.tenant_id, mta_source_name=name)
            .exclude(pk=self.instance.pk)
            .exists()
        ):
            self.add_error("mta_source_name", f"Another IP of this tenant already uses the source name {name!r}.")
        return cleaned


class IPInlineFormSet(BaseInlineFormSet):
    def _construct_form(self, i, **kwargs):
        form = super()._construct_form(i, **kwargs)
        # The inline leaves the tenant out: an IP always belongs to its domain's tenant.
        if form.instance.tenant_id is None:
            form.instance.tenant_id = self.instance.tenant_id
        return form


class IPInline(TenantScopedInline, admin.TabularInline):
    model = IP
    form = IPInlineForm
    formset = IPInlineFormSet
    fields = ("address", "hostname", "mta_source_name", "status", "weight")
    extra = 0
    show_change_link = True


@admin.register(Domain)
class DomainAdmin(TenantScopedAdmin):
    list_display = ("name", "tenant", "status", "ip_count", "created_at")
    list_filter = (TenantListFilter, "status")
    list_select_related = ("tenant",)
    search_fields = ("name", "ips__address", "ips__hostname")
    inlines = (IPInline,)
    # A stable order for the changelist and for the IP form's autocomplete, which pages through domains.
    ordering = ("name",)
    # The add-domain page (warmup) creates domain, IP and plan together; this form edits the inventory.
    change_list_template = "admin/domains/domain/change_list.html"

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(n_ips=Count("ips"))

    @admin.display(description="IPs", ordering="n_ips")
    def ip_count(self, obj) -> int:
        return obj.n_ips

    def get_readonly_fields(self, request, obj=None):
        # Moving a domain to another tenant would strand its IPs in the old one.
        return ("tenant",) if obj is not None else ()
