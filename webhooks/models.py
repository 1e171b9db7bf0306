"""Ingestion's own data: dead letters (events kept for want of an IP, or rejected).

De-duplication keys, counters and message references belong to the counter store (`warmup.counters`).
"""

from django.db import models

from domains.models import Tenant


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
