"""The warmup's data: schedules, plans, daily statistics, audit events, alerts and the counter table.

The rules that move these live in `engine.py` (the daily tick and manual actions), `onboarding.py`
(adding a domain with its IP), `counters.py` and `consolidation.py`.
"""

from datetime import date, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from domains.models import IP, Tenant


def validate_steps(value) -> None:
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(step, int) and not isinstance(step, bool) and step > 0 for step in value)
    ):
        raise ValidationError("Steps must be a non-empty list of positive whole numbers, e.g. [50, 200, 500].")


class Provider(models.TextChoices):
    """Mailbox providers, recognised by the recipient domain (settings.WARMUP_PROVIDER_DOMAINS)."""

    GMAIL = "gmail", "Gmail"
    MICROSOFT = "microsoft", "Microsoft"
    YAHOO = "yahoo", "Yahoo"
    APPLE = "apple", "Apple"
    OTHER = "other", "Other"


class WarmupSchedule(models.Model):
    """A ramp of daily quotas, one step per phase. Plans copy the steps they start with."""

    name = models.CharField(max_length=100, unique=True)
    steps = models.JSONField(
        validators=[validate_steps], help_text="Daily quota of each phase, in order, e.g. [50, 200, 500, 1500]."
    )
    phase_days = models.PositiveSmallIntegerField(
        default=7, help_text="Qualifying days needed in each phase before moving to the next."
    )
    is_default = models.BooleanField(default=False, help_text="Used for new plans when none is chosen.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                fields=["is_default"], condition=models.Q(is_default=True), name="schedule_single_default"
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @classmethod
    def default(cls) -> "WarmupSchedule":
        """The default schedule, created from the WARMUP_* settings the first time it is needed."""
        schedule = cls.objects.filter(is_default=True).first()
        if schedule is None:
            schedule, _ = cls.objects.get_or_create(
                name="Default",
                defaults={
                    "steps": list(settings.WARMUP_DEFAULT_STEPS),
                    "phase_days": settings.WARMUP_PHASE_DAYS,
                    "is_default": True,
                },
            )
        return schedule


class WarmupPlanQuerySet(models.QuerySet):
    def for_tenant(self, tenant) -> "WarmupPlanQuerySet":
        return self.filter(ip__tenant=tenant)

    def visible_to(self, user) -> "WarmupPlanQuerySet":
        return self if user.is_superuser else self.filter(ip__tenant__in=Tenant.objects.visible_to(user))

    def live(self) -> "WarmupPlanQuerySet":
        """Plans the tick still has work for (everything but cancelled)."""
        return self.exclude(status=WarmupPlan.Status.CANCELLED)


class WarmupPlan(models.Model):
    class Phase(models.TextChoices):
        WEEK_1 = "week_1", "Week 1"
        WEEK_2 = "week_2", "Week 2"
        WEEK_3 = "week_3", "Week 3"
        WEEK_4 = "week_4", "Week 4"
        WEEK_5 = "week_5", "Week 5"
        WEEK_6 = "week_6", "Week 6"
        COMPLETED = "completed", "Completed"

    class Status(models.TextChoices):
        SCHEDULED = "scheduled", "Scheduled"
        WARMING = "warming", "Warming"
        PAUSED = "paused", "Paused"
        COMPLETED = "completed", "Completed"
        CANCELLED = "cancelled", "Cancelled"

    ip = models.OneToOneField(IP, on_delete=models.CASCADE, related_name="plan")
    schedule = models.ForeignKey(WarmupSchedule, null=True, blank=True, on_delete=models.SET_NULL, related_name="plans")
    steps = models.JSONField(
        validators=[validate_steps], help_text="The plan's own copy of its schedule's daily quotas."
    )
    phase_days = models.PositiveSmallIntegerField(default=7)
    phase = models.CharField(max_length=16, choices=Phase.choices, default=Phase.WEEK_1)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.SCHEDULED)
    start_date = models.DateField(help_text="Day 1 of the plan, in the tenant's zone.")
    phase_day_count = models.PositiveSmallIntegerField(
        default=0, help_text="Qualifying days so far in the current phase."
    )
    last_ticked_date = models.DateField(
        null=True, blank=True, help_text="The last date the daily tick processed for this plan."
    )
    window_start_date = models.DateField(
        null=True, blank=True, help_text="Rates are never judged on days before this (last start, resume, rollback)."
    )
    paused_until = models.DateTimeField(
        null=True, blank=True, help_text="End of an automatic pause; empty while paused: waits for a person."
    )
    pause_reason = models.TextField(blank=True)
    auto_pause_count = models.PositiveSmallIntegerField(
        default=0, help_text="Automatic pauses since the plan started or a person last resumed it."
    )
    completed_on = models.DateField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = WarmupPlanQuerySet.as_manager()

    class Meta:
        ordering = ["start_date", "id"]
        indexes = [
            # The tick's work queue: every plan that is not cancelled.
            models.Index(
                fields=["status"],
                condition=~models.Q(status="cancelled"),
                name="plan_live_status_idx",
            ),
            # The rotation rule: plans started in a 7-day window per tenant.
            models.Index(fields=["start_date"], name="plan_start_date_idx"),
        ]

    def __str__(self) -> str:
        return f"Plan for {self.ip_id and self.ip.address}"

    # --- Derived figures -------------------------------------------------------------------------

    @property
    def phase_index(self) -> int:
        """0-based index of the current phase in `steps` (the last step once completed)."""
        if self.phase == self.Phase.COMPLETED:
            return len(self.steps) - 1
        return int(self.phase.removeprefix("week_")) - 1

    @property
    def target_quota(self) -> int:
        return self.steps[-1]

    @property
    def phase_quota(self) -> int:
        """The quota of the current phase, whatever the status."""
        return self.steps[min(self.phase_index, len(self.steps) - 1)]

    @property
    def daily_quota(self) -> int:
        """What the IP may send today: the phase's quota while warming, 0 paused or not started."""
        if self.status == self.Status.WARMING:
            return self.phase_quota
        if self.status == self.Status.COMPLETED:
            return self.target_quota
        return 0

    @property
    def needs_attention(self) -> bool:
        return self.status == self.Status.PAUSED and self.paused_until is None

    def warmup_duration_days(self) -> int:
        """Days since the plan started, counting the start day, up to its last processed date."""
        if self.status == self.Status.COMPLETED and self.completed_on:
            return (self.completed_on - self.start_date).days
        if self.status == self.Status.SCHEDULED or self.last_ticked_date is None:
            return 0
        return max(0, (self.last_ticked_date - self.start_date).days + 1)

    @classmethod
    def phase_for_index(cls, index: int) -> str:
        return f"week_{index + 1}"


class DailyStat(models.Model):
    """One IP's consolidated figures for one day (the tenant's zone)."""

    ip = models.ForeignKey(IP, on_delete=models.CASCADE, related_name="daily_stats")
    date = models.DateField()
    sent = models.PositiveIntegerField(default=0)
    delivered = models.PositiveIntegerField(default=0)
    bounced = models.PositiveIntegerField(default=0)
    bounced_hard = models.PositiveIntegerField(default=0)
    bounced_soft = models.PositiveIntegerField(default=0)
    bounced_block = models.PositiveIntegerField(default=0)
    deferred = models.PositiveIntegerField(default=0)
    complaints = models.PositiveIntegerField(default=0)
    opens = models.PositiveIntegerField(default=0)
    clicks = models.PositiveIntegerField(default=0)
    unsubscribes = models.PositiveIntegerField(default=0)
    by_provider = models.JSONField(
        default=dict, blank=True, help_text='Figures per mailbox provider: {"gmail": {"sent": 10, ...}, ...}.'
    )
    updated_at = models.DateTimeField(auto_now=True)

    COUNTERS = (
        "sent",
        "delivered",
        "bounced",
        "bounced_hard",
        "bounced_soft",
        "bounced_block",
        "deferred",
        "complaints",
        "opens",
        "clicks",
        "unsubscribes",
    )

    class Meta:
        verbose_name = "daily stat"
        ordering = ["-date", "ip_id"]
        constraints = [
            models.UniqueConstraint(fields=["ip", "date"], name="dailystat_unique_ip_date"),
        ]
        indexes = [
            # The admin changelist's page, in its order (ORDER BY date DESC, ip_id LIMIT 100): read straight
            # from the index instead of sorting the 10,000 rows of the latest day; its leading column also
            # serves the date hierarchy's MIN/MAX(date) and every date-range filter (retention, dashboard).
            models.Index(fields=["-date", "ip"], name="dailystat_date_ip_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.ip_id} {self.date}"

    @property
    def bounce_rate(self) -> float:
        return rate(self.bounced, self.sent)

    @property
    def complaint_rate(self) -> float:
        return rate(self.complaints, self.delivered)


def rate(part: int, whole: int) -> float:
    """Percentage, 0 when there is nothing to divide by."""
    return round(part * 100.0 / whole, 4) if whole else 0.0


class AuditEvent(models.Model):
    """One state change of a plan, with the figures that caused it and who (or what) acted."""

    class Kind(models.TextChoices):
        STARTED = "started", "Started"
        ADVANCED = "advanced", "Advanced"
        PAUSED = "paused", "Paused"
        RESUMED = "resumed", "Resumed"
        ROLLED_BACK = "rolled_back", "Rolled back"
        COMPLETED = "completed", "Completed"
        REWARMED = "rewarmed", "Re-warmed"
        CANCELLED = "cancelled", "Cancelled"
        MANUAL_PAUSE = "manual_pause", "Manual pause"
        MANUAL_RESUME = "manual_resume", "Manual resume"
        MANUAL_ROLLBACK = "manual_rollback", "Manual rollback"
        MANUAL_ADVANCE = "manual_advance", "Manual advance"
        MANUAL_COMPLETE = "manual_complete", "Manual complete"
        MANUAL_CANCEL = "manual_cancel", "Manual cancel"
        PROVIDER_PAUSED = "provider_paused", "Provider paused"
        PROVIDER_SUSPENDED = "provider_suspended", "Provider suspended (throttling)"
        PROVIDER_RESUMED = "provider_resumed", "Provider resumed"

    plan = models.ForeignKey(WarmupPlan, on_delete=models.CASCADE, related_name="events")
    created_at = models.DateTimeField(help_text="When the decision took effect (the tick's time).")
    date = models.DateField(help_text="The date being processed, in the tenant's zone.")
    kind = models.CharField(max_length=24, choices=Kind.choices)
    from_phase = models.CharField(max_length=16, blank=True)
    to_phase = models.CharField(max_length=16, blank=True)
    from_status = models.CharField(max_length=16, blank=True)
    to_status = models.CharField(max_length=16, blank=True)
    figures = models.JSONField(default=dict, blank=True, help_text="Window sent, bounced, rates, thresholds ...")
    reason = models.TextField(blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        help_text="The user who acted; empty for the system.",
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            # A plan's timeline, newest first.
            models.Index(fields=["plan", "-created_at"], name="audit_plan_created_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.date}"

    @property
    def actor_name(self) -> str:
        return self.actor.get_username() if self.actor_id else "system"


class Alert(models.Model):
    """An operator alert, recorded whether or not it could be delivered."""

    class Kind(models.TextChoices):
        PAUSED = "paused", "Paused"
        RESUMED = "resumed", "Resumed"
        ROLLED_BACK = "rolled_back", "Rolled back"
        COMPLETED = "completed", "Completed"
        NEEDS_ATTENTION = "needs_attention", "Needs attention"
        REWARMED = "rewarmed", "Re-warmed"
        CONSOLIDATION_FAILED = "consolidation_failed", "Consolidation failed"
        COUNTER_STORE_UNHEALTHY = "counter_store_unhealthy", "Counter store unhealthy"
        COUNTER_STORE_RECOVERED = "counter_store_recovered", "Counter store healthy again"
        UNATTRIBUTED_SPIKE = "unattributed_spike", "Unattributed spike"
        QUOTA_OVERRUN = "quota_overrun", "Quota overrun"
        PROVIDER_PAUSED = "provider_paused", "Provider paused"
        PROVIDER_SUSPENDED = "provider_suspended", "Provider suspended (throttling)"
        PROVIDER_RESUMED = "provider_resumed", "Provider resumed"
        MANUAL = "manual", "Manual action"

    class Delivery(models.TextChoices):
        PENDING = "pending", "Pending"
        SENDING = "sending", "Sending"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"
        NOT_CONFIGURED = "not_configured", "Not configured (logged)"
        DRY_RUN = "dry_run", "Dry run"

    # What the delivery task and the sweep may (re)send; SENDING only once its claim has gone stale.
    UNDELIVERED = (Delivery.PENDING, Delivery.SENDING, Delivery.FAILED)

    tenant = models.ForeignKey(Tenant, null=True, blank=True, on_delete=models.CASCADE, related_name="alerts")
    ip = models.ForeignKey(IP, null=True, blank=True, on_delete=models.SET_NULL, related_name="alerts")
    kind = models.CharField(max_length=32, choices=Kind.choices)
    message = models.TextField()
    figures = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField()
    delivery = models.CharField(max_length=16, choices=Delivery.choices, default=Delivery.PENDING)
    delivery_error = models.TextField(blank=True)
    chat_id = models.CharField(max_length=64, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0, help_text="Delivery attempts so far (each may retry).")
    attempted_at = models.DateTimeField(null=True, blank=True, help_text="When the last delivery attempt began.")
    dedup_key = models.CharField(
        max_length=128,
        blank=True,
        help_text="Identifies the occurrence (an IP-day's overrun, a failed run, a tenant's hour of dead "
        "letters): an occurrence is alerted once.",
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["dedup_key"], condition=~models.Q(dedup_key=""), name="alert_unique_dedup")
        ]
        indexes = [
            models.Index(fields=["-created_at"], name="alert_created_idx"),  # recent alerts
            # The delivery sweep: undelivered alerts of the last day.
            models.Index(
                fields=["created_at"],
                condition=models.Q(delivery__in=["pending", "sending", "failed"]),
                name="alert_undelivered_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.created_at:%Y-%m-%d %H:%M}"


class CounterCell(models.Model):
    """The database counter store (embedded default): one row per IP, day and counter field.

    `field` is a counter name, optionally with a provider ("sent" or "sent:gmail"). Increments are
    upserts (`INSERT ... ON CONFLICT (ip, date, field) DO UPDATE SET value = value + EXCLUDED.value`) in
    the transaction that records the events' de-duplication keys.
    """

    ip = models.ForeignKey(IP, on_delete=models.CASCADE, related_name="+")
    date = models.DateField()
    field = models.CharField(max_length=48)
    value = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["ip", "date", "field"], name="countercell_unique_ip_date_field"),
        ]
        indexes = [
            # Consolidation: every finished day, oldest first.
            models.Index(fields=["date"], name="countercell_date_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.ip_id} {self.date} {self.field}={self.value}"


class CounterDedupKey(models.Model):
    """De-duplication keys of the database counter store, pruned after WEBHOOK_DEDUP_TTL_DAYS."""

    key = models.CharField(max_length=64, primary_key=True)
    expires_at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["expires_at"], name="dedupkey_expires_idx")]  # retention

    def __str__(self) -> str:
        return self.key


class ConsolidationBatch(models.Model):
    """Ledger of counter batches already added to the daily stats (exactly-once consolidation)."""

    batch_id = models.CharField(max_length=100, primary_key=True)
    ip = models.ForeignKey(IP, null=True, on_delete=models.SET_NULL, related_name="+")
    date = models.DateField(null=True)
    consolidated_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["consolidated_at"], name="consolbatch_at_idx")]  # retention

    def __str__(self) -> str:
        return self.batch_id


def day_range(first: date, last: date):
    """Dates from first to last inclusive."""
    for offset in range((last - first).days + 1):
        yield first + timedelta(days=offset)


class MessageRef(models.Model):
    """Which IP delivered a message, for attributing later complaints, async bounces, opens, clicks.

    `ref` is a Message-Id or a MailWizz "campaign_uid/subscriber_uid" pair, kept
    WEBHOOK_MESSAGE_REF_TTL_DAYS. The database counter store's references (the embedded default); with
    Redis they live in Redis with a TTL.
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


class ProviderShare(models.Model):
    """A tenant's share of each IP's daily quota for one mailbox provider (`providers.py` splits it).

    Shares are weights: each provider gets its share of their total. A tenant without rows gets the
    split of its own last 7 days of sent mail, else settings.WARMUP_PROVIDER_SHARES.
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="provider_shares")
    provider = models.CharField(max_length=16, choices=Provider.choices)
    share = models.DecimalField(
        max_digits=5,
        decimal_places=2,
        validators=[MinValueValidator(0), MaxValueValidator(100)],
        help_text="Percent of each IP's daily quota for this provider (weights: they are scaled to their total).",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["tenant_id", "provider"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "provider"], name="providershare_unique_tenant_provider"),
        ]

    def __str__(self) -> str:
        return f"{self.provider} {self.share}%"


class ProviderSuspensionQuerySet(models.QuerySet):
    def active(self, now) -> "ProviderSuspensionQuerySet":
        """Suspensions in force at `now`."""
        return self.filter(starts_at__lte=now, ends_at__gt=now)

    def visible_to(self, user) -> "ProviderSuspensionQuerySet":
        return self if user.is_superuser else self.filter(ip__tenant__in=Tenant.objects.visible_to(user))


class ProviderSuspension(models.Model):
    """One IP stopped for one mailbox provider until `ends_at`: its share of the quota is 0 meanwhile.

    The engine pauses a provider whose bounce or complaint rate trips a threshold; the throttling check
    suspends one whose deferrals say the provider is rate-limiting the IP. Lifting is by time; `lifted_at`
    records that the lift was seen (audit event and alert), or that a person lifted it early.
    """

    class Reason(models.TextChoices):
        THRESHOLD = "threshold", "Bounce or complaint threshold"
        THROTTLING = "throttling", "Throttling deferrals"
        MANUAL = "manual", "Manual"

    ip = models.ForeignKey(IP, on_delete=models.CASCADE, related_name="provider_suspensions")
    provider = models.CharField(max_length=16, choices=Provider.choices)
    reason = models.CharField(max_length=16, choices=Reason.choices)
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField(help_text="The provider gets its share back at this time.")
    lifted_at = models.DateTimeField(null=True, blank=True, help_text="When the lift was recorded.")
    figures = models.JSONField(default=dict, blank=True, help_text="The figures behind the decision.")
    created_at = models.DateTimeField(auto_now_add=True)

    objects = ProviderSuspensionQuerySet.as_manager()

    class Meta:
        ordering = ["-starts_at", "-id"]
        indexes = [
            # Suspensions in force for a set of IPs (quotas, configurations, the engine).
            models.Index(fields=["ip", "ends_at"], name="suspension_ip_ends_idx"),
            # The lifting's work queue: suspensions whose end has not been recorded yet.
            models.Index(
                fields=["ends_at"], condition=models.Q(lifted_at__isnull=True), name="suspension_unlifted_idx"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.provider} on {self.ip_id} until {self.ends_at:%Y-%m-%d %H:%M}"
