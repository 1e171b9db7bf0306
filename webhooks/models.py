"""Ingestion's own data: dead letters (events kept for want of an IP, or rejected) and message references.

De-duplication keys and counters belong to the counter store (`warmup.counters`).
"""

from django.db import models

from domains.models import IP, Tenant


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


class MessageRef(models.Model):
    """Which IP delivered a message, for attributing later complaints, async bounces, opens, clicks.

    `ref` is a Message-Id or a MailWizz "campaign_uid/subscriber_uid" pair. Kept 30 days.
    Used by the database counter store; with Redis the references live in Redis with a TTL.
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    ref = models.CharField(max_length=255)
    ip = models.ForeignKey(IP, on_delete=models.CASCADE, related_name="+")
    expires_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "ref"], name="messageref_unique_tenant_ref"),
        ]
        indexes = [models.Index(fields=["expires_at"], name="messageref_expires_idx")]  # retention

    def __str__(self) -> str:
        return self.ref
