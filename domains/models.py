"""The inventory: tenants (brands), their sending domains and IPs, and their webhook credentials.

This app knows nothing of warmups or of any sender's format; `warmup` and `webhooks` build on it.
"""

import hashlib
import ipaddress
import secrets
import zoneinfo
from functools import cached_property

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone


def validate_time_zone(value: str) -> None:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValidationError(f"Unknown time zone {value!r} (use an IANA name such as Europe/Paris).") from None


class TenantQuerySet(models.QuerySet):
    def visible_to(self, user) -> "TenantQuerySet":
        """The tenants a user may see and act on: all for a superuser, their own for a member."""
        if user.is_superuser:
            return self
        if not user.is_authenticated:
            return self.none()
        return self.filter(members=user)


class Tenant(models.Model):
    name = models.CharField(max_length=100, unique=True)
    slug = models.SlugField(max_length=50, unique=True)
    time_zone = models.CharField(
        max_length=64,
        default="UTC",
        validators=[validate_time_zone],
        help_text="IANA time zone; the tenant's days (quotas, statistics) run midnight to midnight here.",
    )
    members = models.ManyToManyField(
        settings.AUTH_USER_MODEL,
        blank=True,
        related_name="tenants",
        help_text="Users who may see and act on this tenant's domains and IPs.",
    )
    telegram_chat_id = models.CharField(
        max_length=64, blank=True, help_text="Telegram chat for this tenant's alerts; empty: the default chat."
    )
    webhook_signing_secret = models.CharField(
        max_length=128,
        blank=True,
        help_text="When set, webhook requests must carry a valid X-Warmup-Signature made with this secret.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @cached_property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.time_zone)

    def today(self):
        """Today's date in the tenant's zone."""
        return timezone.now().astimezone(self.zone).date()


class DomainQuerySet(models.QuerySet):
    def for_tenant(self, tenant) -> "DomainQuerySet":
        return self.filter(tenant=tenant)

    def visible_to(self, user) -> "DomainQuerySet":
        return self if user.is_superuser else self.filter(tenant__in=Tenant.objects.visible_to(user))


class Domain(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        WARMING = "warming", "Warming"
        ACTIVE = "active", "Active"
        RETIRED = "retired", "Retired"

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="domains")
    name = models.CharField(max_length=253, unique=True, help_text="Sending domain, e.g. mail1.example.com.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = DomainQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        indexes = [
            # The admin's and the API's tenant-scoped lists.
            models.Index(fields=["tenant", "status"], name="domain_tenant_status_idx"),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if self.name:
            self.name = self.name.strip().lower().rstrip(".")


class IPQuerySet(models.QuerySet):
    def for_tenant(self, tenant) -> "IPQuerySet":
        return self.filter(tenant=tenant)

    def visible_to(self, user) -> "IPQuerySet":
        return self if user.is_superuser else self.filter(tenant__in=Tenant.objects.visible_to(user))

    def warming(self) -> "IPQuerySet":
        return self.filter(status=IP.Status.WARMING)

    def active(self) -> "IPQuerySet":
        return self.filter(status=IP.Status.ACTIVE)

    def not_retired(self) -> "IPQuerySet":
        return self.exclude(status=IP.Status.RETIRED)


class IP(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        WARMING = "warming", "Warming"
        PAUSED = "paused", "Paused"
        ACTIVE = "active", "Active"
        RETIRED = "retired", "Retired"

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="ips")
    domain = models.ForeignKey(Domain, on_delete=models.PROTECT, related_name="ips")
    address = models.GenericIPAddressField(unique=True, help_text="IPv4 or IPv6 sending address.")
    hostname = models.CharField(
        max_length=253, blank=True, help_text="rDNS / EHLO name; defaults to the domain in the MTA configuration."
    )
    mta_source_name = models.CharField(
        max_length=100,
        blank=True,
        help_text="The MTA's name for this source: PowerMTA virtual-mta or KumoMTA egress_source.",
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    weight = models.PositiveSmallIntegerField(
        default=0,
        validators=[MinValueValidator(0), MaxValueValidator(100)],
        help_text="Share of the domain's traffic, 0-100: 0 while warming, 100 once active.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = IPQuerySet.as_manager()

    class Meta:
        verbose_name = "IP"
        verbose_name_plural = "IPs"
        ordering = ["address"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "mta_source_name"],
                condition=~models.Q(mta_source_name=""),
                name="ip_unique_mta_source_name_per_tenant",
            ),
            models.CheckConstraint(condition=models.Q(weight__lte=100), name="ip_weight_at_most_100"),
        ]
        indexes = [
            # Tenant-scoped changelists filtered by status; attribution by source name.
            models.Index(fields=["tenant", "status"], name="ip_tenant_status_idx"),
        ]

    def __str__(self) -> str:
        return self.address

    def clean(self) -> None:
        if self.address:
            self.address = normalise_ip(self.address)
        if self.domain_id and self.tenant_id and self.domain.tenant_id != self.tenant_id:
            raise ValidationError({"domain": "The domain belongs to another tenant."})

    @property
    def mta_name(self) -> str:
        """The PowerMTA virtual-mta name: the source name, else `vmta-` and the address."""
        return self.mta_source_name or "vmta-" + self.address.replace(".", "-").replace(":", "-")


def normalise_ip(value: str) -> str:
    """The canonical text of an IP address; ValueError names the problem."""
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise ValueError(f"{value!r} is not a valid IPv4 or IPv6 address") from None


class MTASource(models.Model):
    """An installation-level sender: one MTA posting one accounting stream for several tenants.

    Its tokens credit the IPs of the tenants it lists, each event to the tenant that has its IP; what
    names no IP of theirs (or nothing to attribute it by) is kept as a dead letter of `home_tenant`.
    """

    name = models.CharField(max_length=100, unique=True, help_text="The MTA, e.g. 'pmta-shared-1'.")
    tenants = models.ManyToManyField(
        Tenant, related_name="mta_sources", help_text="The tenants whose IPs this MTA's events may credit."
    )
    home_tenant = models.ForeignKey(
        Tenant,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="Keeps as dead letters the events that name no IP of the listed tenants.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "MTA source"
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class WebhookTokenQuerySet(models.QuerySet):
    def active(self) -> "WebhookTokenQuerySet":
        return self.filter(revoked_at__isnull=True)


class WebhookToken(models.Model):
    """A webhook credential of a tenant, or of an MTA source. Only its SHA-256 is stored; the token is
    shown once."""

    tenant = models.ForeignKey(Tenant, null=True, blank=True, on_delete=models.CASCADE, related_name="webhook_tokens")
    mta_source = models.ForeignKey(
        MTASource, null=True, blank=True, on_delete=models.CASCADE, related_name="webhook_tokens"
    )
    label = models.CharField(max_length=100, blank=True, help_text="Which sender uses it, e.g. 'pmta-1'.")
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    prefix = models.CharField(max_length=12, editable=False, help_text="First characters, to recognise it.")
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = WebhookTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # A token belongs to a tenant or to an MTA source, never both, never neither.
            models.CheckConstraint(
                condition=models.Q(tenant__isnull=True) ^ models.Q(mta_source__isnull=True),
                name="webhooktoken_one_owner",
            )
        ]

    def __str__(self) -> str:
        return f"{self.tenant or self.mta_source} {self.prefix}… ({'revoked' if self.revoked_at else 'active'})"

    @staticmethod
    def hash(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    @classmethod
    def issue(
        cls, tenant: Tenant | None = None, label: str = "", rotate: bool = False, *, mta_source: MTASource | None = None
    ) -> tuple["WebhookToken", str]:
        """Create a token for the tenant (or the MTA source) and return it with its clear text (shown once).

        With `rotate`, every other token of the same owner is revoked.
        """
        owner = {"tenant": tenant} if tenant is not None else {"mta_source": mta_source}
        token = "wpt_" + secrets.token_urlsafe(32)
        if rotate:
            cls.objects.filter(**owner, revoked_at__isnull=True).update(revoked_at=timezone.now())
        obj = cls.objects.create(**owner, label=label, token_hash=cls.hash(token), prefix=token[:12])
        return obj, token
