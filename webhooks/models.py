"""Ingestion's own data: dead letters (events kept for want of an IP, or rejected), and the rules that
classify a deferral's SMTP reply (`DeferralRule`, read by `webhooks.deferrals`).

De-duplication keys, counters and message references belong to the counter store (`warmup.counters`).
"""

import re

from django.core.exceptions import ValidationError
from django.db import models

from domains.models import Tenant
from warmup.models import Provider


class DeadLetterQuerySet(models.QuerySet):
    def pending(self) -> "DeadLetterQuerySet":
        return self.filter(processed_at__isnull=True)

    def visible_to(self, user) -> "DeadLetterQuerySet":
        return self if user.is_superuser else self.filter(tenant__in=Tenant.objects.visible_to(user))


class DeadLetter(models.Model):
    """A record that could not be counted: kept with its raw text and the reason, never dropped."""

    class Reason(models.TextChoices):
        UNATTRIBUTED = "unattributed", "No sending IP could be found"
        UNKNOWN_IP = "unknown_ip", "IP not known to the tenant"
        INVALID = "invalid", "Invalid record"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="dead_letters")
    source = models.CharField(max_length=16)
    reason = models.CharField(max_length=16, choices=Reason.choices)
    error = models.TextField(blank=True)
    raw = models.JSONField(help_text="The record as received (CSV rows as a header-to-value object).")
    ip_address = models.GenericIPAddressField(null=True, blank=True, help_text="The IP the record names, if any.")
    event_key = models.CharField(max_length=64, blank=True)
    received_at = models.DateTimeField(auto_now_add=True)
    processed_at = models.DateTimeField(null=True, blank=True, help_text="When re-processing counted it.")

    objects = DeadLetterQuerySet.as_manager()

    class Meta:
        ordering = ["-received_at", "-id"]
        constraints = [
            # An unattributed event posted twice is kept once (senders retry).
            models.UniqueConstraint(
                fields=["tenant", "event_key"], condition=~models.Q(event_key=""), name="deadletter_unique_event"
            ),
        ]
        indexes = [
            # The admin list (pending first) and retention by age.
            models.Index(fields=["tenant", "processed_at"], name="deadletter_tenant_pending_idx"),
            models.Index(fields=["received_at"], name="deadletter_received_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.source} {self.get_reason_display()} #{self.pk}"


def validate_pattern(value: str) -> None:
    """A rule's pattern must compile as a Python regular expression (matched case-insensitively)."""
    try:
        re.compile(value, re.IGNORECASE)
    except re.error as exc:
        raise ValidationError(f"Pattern: not a valid regular expression ({exc}).", code="invalid_regex") from None


class DeferralRule(models.Model):
    """One line of the table that classifies a deferral's SMTP reply (README "Providers").

    A deferred event is classified once, when it is counted, by the enabled rule of the lowest `order`
    whose provider is the event's (or blank: any provider) and whose pattern is found in the reply
    (enhanced code and text, e.g. "421-4.7.28 ... unusual rate of unsolicited mail"). Rate-limited and
    reputation replies count as throttling for the provider suspension check (`warmup.throttling`).
    """

    class Classification(models.TextChoices):
        RATE_LIMITED = "rate_limited", "Rate limited"
        REPUTATION = "reputation", "Reputation block"
        OTHER = "other", "Other"

    THROTTLING = (Classification.RATE_LIMITED, Classification.REPUTATION)

    provider = models.CharField(
        max_length=16,
        blank=True,
        choices=Provider.choices,
        help_text="The mailbox provider whose replies this rule reads; blank for any.",
    )
    pattern = models.CharField(
        max_length=500,
        validators=[validate_pattern],
        help_text="A regular expression searched in the SMTP reply, case-insensitively (e.g. 4\\.7\\.28).",
    )
    classification = models.CharField(max_length=16, choices=Classification.choices)
    order = models.PositiveIntegerField(default=100, help_text="Rules are tried from the lowest order up.")
    enabled = models.BooleanField(default=True)
    note = models.TextField(blank=True, help_text="What the reply means and where the rule comes from.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["order", "id"]
        verbose_name = "deferral rule"

    def __str__(self) -> str:
        return f"{self.order}: {self.provider or 'any'} /{self.pattern}/ -> {self.classification}"
