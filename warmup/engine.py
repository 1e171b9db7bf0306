"""The warmup engine: the daily tick and the manual actions on a plan (PRODUCT.md section 5).

The tick processes, for each plan, every date from the one after its last processed date up to D, in
order, as if it had run at 01:00 of each of those dates in the tenant's zone; so a beat outage ends in
the same state as daily ticks would have, and a second tick for the same D finds nothing to do.

It is built for many plans: the plans to process are locked and loaded in two queries, the daily
stats they need in one or two more, the decisions are taken in Python, and the changes are written
back in bulk, so that the number of SQL statements does not grow with the number of plans (only
alerts, which are rare, cost a statement each).

Every state change writes an `AuditEvent` with the figures behind it; IP status and weight mirror the
plan (pending while scheduled, warming and paused with weight 0, active with weight 100 once completed).

Mailbox providers (README "Providers"): a warming plan whose overall rates pass is judged per provider
from the days' `by_provider` figures by the same rules; a provider that trips is suspended for the IP
(a `ProviderSuspension`, its share of the quota 0 for WARMUP_PROVIDER_PAUSE_HOURS) while the plan keeps
warming for the others, and the pause that makes WARMUP_PROVIDER_PAUSES_BEFORE_IP_PAUSE within
WARMUP_PROVIDER_ESCALATION_DAYS pauses the IP itself. The plans' suspensions are loaded in one query and
the new ones created in one statement, so the tick's query count still does not grow with the plans.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Max, Q
from django.utils import timezone

from domains.models import IP, Domain, Tenant

from . import alerts
from .consolidation import consolidate
from .models import Alert, AuditEvent, ProviderSuspension, WarmupPlan, day_range, rate
from .providers import PROVIDERS

ACTIONS = ("pause", "resume", "rollback", "advance", "complete", "cancel")

Plan = WarmupPlan
Kind = AuditEvent.Kind

# IP status mirrors the plan's status.
IP_STATUS_FOR_PLAN = {
    Plan.Status.SCHEDULED: IP.Status.PENDING,
    Plan.Status.WARMING: IP.Status.WARMING,
    Plan.Status.PAUSED: IP.Status.PAUSED,
    Plan.Status.COMPLETED: IP.Status.ACTIVE,
    Plan.Status.CANCELLED: IP.Status.PENDING,
}

# The plan fields the engine changes (written back in bulk).
PLAN_FIELDS = (
    "status",
    "phase",
    "phase_day_count",
    "start_date",
    "last_ticked_date",
    "window_start_date",
    "paused_until",
    "pause_reason",
    "auto_pause_count",
    "completed_on",
    "updated_at",
)

# Re-warmed IPs restart at the third phase (PRODUCT.md section 5, rule 5).
REWARM_PHASE_INDEX = 2


class ActionRefused(Exception):
    """A manual action the plan's state does not allow; the message says why."""


@dataclass
class TickReport:
    dates: list[date] = field(default_factory=list)
    plans_processed: int = 0
    events: list[AuditEvent] = field(default_factory=list)


@dataclass(frozen=True)
class Rules:
    """The WARMUP_* settings, read when a tick or an action starts (tests override them)."""

    max_bounce_rate: float
    max_spam_rate: float
    min_sample: int
    window_days: int
    min_complaints: int
    min_utilization: float
    pause_hours: int
    rollback_on_pause: bool
    max_auto_resumes: int
    idle_rewarm_days: int
    tick_hour: int
    provider_pause_hours: int
    provider_pauses_before_ip_pause: int
    provider_escalation_days: int

    @classmethod
    def current(cls) -> Rules:
        return cls(
            max_bounce_rate=float(settings.WARMUP_MAX_BOUNCE_RATE),
            max_spam_rate=float(settings.WARMUP_MAX_SPAM_RATE),
            min_sample=int(settings.WARMUP_MIN_SAMPLE),
            window_days=max(1, int(settings.WARMUP_RATE_WINDOW_DAYS)),
            min_complaints=int(settings.WARMUP_MIN_COMPLAINTS),
            min_utilization=float(settings.WARMUP_MIN_DAILY_UTILIZATION),
            pause_hours=int(settings.WARMUP_PAUSE_HOURS),
            rollback_on_pause=bool(settings.WARMUP_ROLLBACK_ON_PAUSE),
            max_auto_resumes=int(settings.WARMUP_MAX_AUTO_RESUMES),
            idle_rewarm_days=max(1, int(settings.WARMUP_IDLE_REWARM_DAYS)),
            tick_hour=int(settings.WARMUP_TICK_HOUR),
            provider_pause_hours=int(settings.WARMUP_PROVIDER_PAUSE_HOURS),
            provider_pauses_before_ip_pause=max(1, int(settings.WARMUP_PROVIDER_PAUSES_BEFORE_IP_PAUSE)),
            provider_escalation_days=max(1, int(settings.WARMUP_PROVIDER_ESCALATION_DAYS)),
        )


# --- Public helpers ------------------------------------------------------------------------------


def ip_daily_quota(ip: IP) -> int:
    """What the IP may send today: its plan's quota while warming, 0 paused, pending or retired,
    the target once active; 0 without a plan."""
    if ip.status == IP.Status.RETIRED:
        return 0
    try:
        plan = ip.plan
    except Plan.DoesNotExist:
        return 0
    return plan.daily_quota


def tick_time(tenant: Tenant, day: date, hour: int | None = None) -> datetime:
    """01:00 (WARMUP_TICK_HOUR) of `day` in the tenant's zone: the time the tick for that day takes effect."""
    return datetime.combine(day, time(settings.WARMUP_TICK_HOUR if hour is None else hour), tzinfo=tenant.zone)


def tick_date(tenant: Tenant, now: datetime | None = None, hour: int | None = None) -> date:
    """The latest date the tick may process for the tenant: today once past 01:00 local, else yesterday."""
    local = (now or timezone.now()).astimezone(tenant.zone)
    hour = settings.WARMUP_TICK_HOUR if hour is None else hour
    return local.date() if local.time() >= time(hour) else local.date() - timedelta(days=1)


# --- Collected changes, written back in bulk ---------------------------------------------------


class _Changes:
    """Plans, IPs and domains changed by a tick or an action, with their audit events and alerts."""

    def __init__(self) -> None:
        self.plans: dict[int, Plan] = {}
        self.ips: dict[int, IP] = {}
        self.domains: dict[int, Domain] = {}
        self.activated_domains: set[int] = set()
        self.events: list[AuditEvent] = []
        self.alerts: list[dict] = []
        self.suspensions: list[ProviderSuspension] = []
        # Plan field values as loaded, so that only the columns that changed are written.
        self.originals: dict[int, dict] = {}

    def remember(self, plans: Iterable[Plan]) -> None:
        for plan in plans:
            self.originals[plan.pk] = {name: getattr(plan, name) for name in PLAN_FIELDS}

    def plan(self, plan: Plan) -> None:
        self.plans[plan.pk] = plan

    def mirror_ip(self, plan: Plan) -> None:
        """Set the IP's status and weight from its plan; a warming IP makes its domain warming."""
        ip = plan.ip
        if ip.status == IP.Status.RETIRED:
            return
        status = IP_STATUS_FOR_PLAN[plan.status]
        weight = 100 if status == IP.Status.ACTIVE else 0
        if (ip.status, ip.weight) != (status, weight):
            ip.status, ip.weight = status, weight
            self.ips[ip.pk] = ip
        domain = ip.domain
        if status == IP.Status.WARMING and domain.status in (Domain.Status.PENDING, Domain.Status.ACTIVE):
            domain.status = Domain.Status.WARMING
            self.domains[domain.pk] = domain
        if status == IP.Status.ACTIVE:
            self.activated_domains.add(domain.pk)

    def event(
        self,
        plan: Plan,
        kind: str,
        *,
        day: date,
        when: datetime,
        from_phase: str,
        from_status: str,
        figures: dict | None = None,
        reason: str = "",
        actor=None,
    ) -> AuditEvent:
        event = AuditEvent(
            plan=plan,
            created_at=when,
            date=day,
            kind=kind,
            from_phase=from_phase,
            to_phase=plan.phase,
            from_status=from_status,
            to_status=plan.status,
            figures=figures or {},
            reason=reason,
            actor=actor if actor is not None and getattr(actor, "pk", None) else None,
        )
        self.events.append(event)
        return event

    def alert(self, kind: str, plan: Plan, message: str, *, when: datetime, figures: dict | None = None) -> None:
        """Queue an alert (raised once the changes are written); `message` from the warmup.alerts helpers."""
        ip = plan.ip
        self.alerts.append(
            {"kind": kind, "tenant": ip.tenant, "ip": ip, "message": message, "figures": figures or {}, "when": when}
        )

    def flush(self, now: datetime) -> None:
        """Write everything back: plans, IPs, domains in bulk, then suspensions, events and alerts."""
        for plan in self.plans.values():
            plan.updated_at = now
        _bulk_save(Plan, list(self.plans.values()), PLAN_FIELDS, self.originals)
        _bulk_save(IP, list(self.ips.values()), ("status", "weight"))
        if self.activated_domains:
            # A domain is active once all its IPs that are not retired are active (IPs saved above).
            pending = set(
                IP.objects.filter(domain_id__in=self.activated_domains)
                .exclude(status__in=(IP.Status.ACTIVE, IP.Status.RETIRED))
                .values_list("domain_id", flat=True)
            )
            for plan in self.plans.values():
                domain = plan.ip.domain
                if (
                    domain.pk in self.activated_domains
                    and domain.pk not in pending
                    and domain.status not in (Domain.Status.ACTIVE, Domain.Status.RETIRED)
                ):
                    domain.status = Domain.Status.ACTIVE
                    self.domains[domain.pk] = domain
        _bulk_save(Domain, list(self.domains.values()), ("status",))
        if self.suspensions:
            ProviderSuspension.objects.bulk_create(self.suspensions)
        if self.events:
            AuditEvent.objects.bulk_create(self.events)
        alerts.raise_alerts(self.alerts)


def _bulk_save(model, objs: list, fields: Iterable[str], originals: dict | None = None) -> None:
    """Save `fields` of many rows in one statement.

    On PostgreSQL: one `UPDATE ... FROM unnest(arrays)`, because Django's bulk_update builds a CASE per
    field whose cost grows with the square of the row count (seconds for 10,000 plans). Columns left
    unchanged (per `originals`, {pk: {field: value}}) are not written; a column with one value for
    all rows is sent as a single parameter. Elsewhere (the embedded SQLite default) Django's bulk_update.
    """
    if not objs:
        return
    fields = list(fields)
    if originals:
        fields = [
            name
            for name in fields
            if any(
                obj.pk not in originals or originals[obj.pk].get(name, _MISSING) != getattr(obj, name) for obj in objs
            )
        ]
        if not fields:
            return
    if connection.vendor != "postgresql":
        model.objects.bulk_update(objs, fields, batch_size=500)
        return
    meta = model._meta
    qn = connection.ops.quote_name
    pk = meta.pk
    aliases, casts, arrays = ["pk"], [pk.rel_db_type(connection)], [[obj.pk for obj in objs]]
    assignments, scalars = [], []
    for index, name in enumerate(fields):
        column = meta.get_field(name)
        # Dates, datetimes, numbers and text: psycopg adapts the attribute values as they are.
        values = [getattr(obj, column.attname) for obj in objs]
        first = values[0]
        if all(value == first and type(value) is type(first) for value in values):
            assignments.append(f"{qn(column.column)} = %s::{column.db_type(connection)}")
            scalars.append(first)
        else:
            alias = f"c{index}"
            aliases.append(alias)
            casts.append(column.db_type(connection))
            arrays.append(values)
            assignments.append(f"{qn(column.column)} = v.{alias}")
    unnest = ", ".join(f"%s::{cast}[]" for cast in casts)
    sql = (
        f"UPDATE {qn(meta.db_table)} AS t SET {', '.join(assignments)} "
        f"FROM unnest({unnest}) AS v({', '.join(aliases)}) WHERE t.{qn(pk.column)} = v.pk"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*scalars, *arrays])


_MISSING = object()


# --- State transitions (shared by the tick and the manual actions) ------------------------------


def _phase_move(plan: Plan, index: int) -> None:
    plan.phase = Plan.phase_for_index(max(0, min(index, len(plan.steps) - 1)))
    plan.phase_day_count = 0


def start_plan(plan: Plan, day: date, when: datetime, changes: _Changes) -> None:
    """Rule 1: a scheduled plan starts; day 1 of the plan is `day`."""
    from_phase, from_status = plan.phase, plan.status
    plan.status = Plan.Status.WARMING
    _phase_move(plan, 0)
    plan.window_start_date = day
    plan.paused_until = None
    plan.pause_reason = ""
    plan.auto_pause_count = 0
    changes.plan(plan)
    changes.mirror_ip(plan)
    changes.event(
        plan,
        Kind.STARTED,
        day=day,
        when=when,
        from_phase=from_phase,
        from_status=from_status,
        figures={"start_date": plan.start_date.isoformat(), "daily_quota": plan.phase_quota},
    )


def _resume(
    plan: Plan, day: date, when: datetime, changes: _Changes, *, manual: bool = False, actor=None, reason: str = ""
) -> AuditEvent:
    from_phase, from_status = plan.phase, plan.status
    figures = {"paused_until": plan.paused_until.isoformat() if plan.paused_until else None}
    plan.status = Plan.Status.WARMING
    plan.phase_day_count = 0
    plan.window_start_date = day
    plan.paused_until = None
    plan.pause_reason = ""
    if manual:
        # A person resuming gives the plan a fresh allowance of automatic resumes.
        plan.auto_pause_count = 0
    changes.plan(plan)
    changes.mirror_ip(plan)
    kind = Kind.MANUAL_RESUME if manual else Kind.RESUMED
    figures["daily_quota"] = plan.phase_quota
    event = changes.event(
        plan,
        kind,
        day=day,
        when=when,
        from_phase=from_phase,
        from_status=from_status,
        figures=figures,
        reason=reason,
        actor=actor,
    )
    if not manual:
        changes.alert(
            Alert.Kind.RESUMED,
            plan,
            alerts.resume_message(plan.ip, phase=plan.phase, quota=plan.phase_quota),
            when=when,
            figures=figures,
        )
    return event


def _complete(
    plan: Plan, day: date, when: datetime, changes: _Changes, *, kind: str, figures: dict, actor=None, reason: str = ""
) -> AuditEvent:
    from_phase, from_status = plan.phase, plan.status
    plan.status = Plan.Status.COMPLETED
    plan.phase = Plan.Phase.COMPLETED
    plan.phase_day_count = 0
    plan.completed_on = day
    plan.paused_until = None
    plan.pause_reason = ""
    if plan.start_date > day:
        # Completed before its scheduled start (an IP imported already warm): it started today.
        plan.start_date = day
    changes.plan(plan)
    changes.mirror_ip(plan)
    figures = {**figures, "daily_quota": plan.target_quota, "warmup_duration_days": plan.warmup_duration_days()}
    event = changes.event(
        plan,
        kind,
        day=day,
        when=when,
        from_phase=from_phase,
        from_status=from_status,
        figures=figures,
        reason=reason,
        actor=actor,
    )
    changes.alert(
        Alert.Kind.COMPLETED,
        plan,
        alerts.completed_message(plan.ip, days=plan.warmup_duration_days(), quota=plan.target_quota),
        when=when,
        figures=figures,
    )
    return event


# --- The daily tick -----------------------------------------------------------------------------


class _Stats:
    """The consolidated daily figures a tick needs, loaded in one query (and one aggregate)."""

    def __init__(self) -> None:
        self.rows: dict[tuple[int, date], tuple[int, int, int, int]] = {}
        # The same figures per mailbox provider, for the days that have them.
        self.provider_rows: dict[tuple[int, date], dict[str, tuple[int, int, int, int]]] = {}
        self.sent_days: dict[int, list[date]] = defaultdict(list)  # sorted dates with mail, per IP
        self.last_sent_before: dict[int, date] = {}  # last day with mail before the loaded range

    def get(self, ip_id: int, day: date, provider: str | None = None) -> tuple[int, int, int, int]:
        """(sent, delivered, bounced, complaints) of the IP's day, overall or for one provider."""
        if provider is None:
            return self.rows.get((ip_id, day), (0, 0, 0, 0))
        return self.provider_rows.get((ip_id, day), {}).get(provider, (0, 0, 0, 0))

    def last_sent(self, ip_id: int, before: date) -> date | None:
        days = self.sent_days.get(ip_id, [])
        index = bisect_left(days, before)
        if index:
            return days[index - 1]
        return self.last_sent_before.get(ip_id)


_JUDGED = ("sent", "delivered", "bounced", "complaints")


def _provider_figures(by_provider: dict | None) -> dict[str, tuple[int, int, int, int]]:
    """A DailyStat's by_provider JSON as (sent, delivered, bounced, complaints) per provider."""
    figures = {}
    for provider, counts in (by_provider or {}).items():
        if isinstance(counts, dict):
            figures[provider] = tuple(int(counts.get(name) or 0) for name in _JUDGED)
    return figures


class _Suspensions:
    """The provider suspensions of the processed plans' IPs, loaded in one query.

    Those the tick decides are added as it goes, so that a catch-up over several days sees on a later
    day the suspensions it decided on an earlier one; `changes.flush` creates them in one statement.
    """

    def __init__(self) -> None:
        self.by_ip: dict[int, list[ProviderSuspension]] = defaultdict(list)

    def add(self, suspension: ProviderSuspension) -> None:
        self.by_ip[suspension.ip_id].append(suspension)

    def in_force(self, ip_id: int, provider: str, when: datetime) -> bool:
        return any(s.provider == provider and s.starts_at <= when < s.ends_at for s in self.by_ip.get(ip_id, ()))

    def last_end(self, ip_id: int, provider: str, when: datetime) -> datetime | None:
        """The end of the provider's latest suspension over by `when`."""
        ends = [s.ends_at for s in self.by_ip.get(ip_id, ()) if s.provider == provider and s.ends_at <= when]
        return max(ends, default=None)

    def threshold_started(self, ip_id: int, since: datetime, when: datetime) -> list[ProviderSuspension]:
        """The IP's threshold suspensions that started from `since` to `when`, oldest first."""
        found = [
            s
            for s in self.by_ip.get(ip_id, ())
            if s.reason == ProviderSuspension.Reason.THRESHOLD and since <= s.starts_at <= when
        ]
        return sorted(found, key=lambda s: (s.starts_at, s.provider))


def _plan_key(plan: Plan) -> Q:
    """Rows of the plans sharing this plan's last processed date (a join, so no list of ids)."""
    if plan.last_ticked_date is None:
        return Q(ip__plan__last_ticked_date__isnull=True)
    return Q(ip__plan__last_ticked_date=plan.last_ticked_date)


def _load_stats(work: list[tuple[Plan, date, date]], rules: Rules) -> _Stats:
    from .models import DailyStat

    stats = _Stats()
    if not work:
        return stats
    # Plans are grouped by their last processed date: a handful of groups, whatever their number.
    ranges: dict[date | None, list] = {}
    idle_ranges: dict[date | None, list] = {}
    for plan, first, last in work:
        lo, hi = first - timedelta(days=rules.window_days), last - timedelta(days=1)
        current = ranges.setdefault(plan.last_ticked_date, [lo, hi, plan])
        current[0], current[1] = min(current[0], lo), max(current[1], hi)
        if plan.status == Plan.Status.COMPLETED and rules.idle_rewarm_days > rules.window_days:
            ilo = first - timedelta(days=rules.idle_rewarm_days)
            ihi = lo - timedelta(days=1)
            current = idle_ranges.setdefault(plan.last_ticked_date, [ilo, ihi, plan])
            current[0], current[1] = min(current[0], ilo), max(current[1], ihi)
    condition = Q()
    for lo, hi, plan in ranges.values():
        condition |= _plan_key(plan) & Q(date__gte=lo, date__lte=hi)
    rows = DailyStat.objects.filter(condition).values_list(
        "ip_id", "date", "sent", "delivered", "bounced", "complaints", "by_provider"
    )
    for ip_id, day, sent, delivered, bounced, complaints, by_provider in rows:
        stats.rows[(ip_id, day)] = (sent, delivered, bounced, complaints)
        if by_provider:
            stats.provider_rows[(ip_id, day)] = _provider_figures(by_provider)
        if sent:
            stats.sent_days[ip_id].append(day)
    for days in stats.sent_days.values():
        days.sort()
    if idle_ranges:
        condition = Q()
        for lo, hi, plan in idle_ranges.values():
            condition |= _plan_key(plan) & Q(date__gte=lo, date__lte=hi)
        latest = (
            DailyStat.objects.filter(condition, sent__gt=0, ip__plan__status=Plan.Status.COMPLETED)
            .values("ip_id")
            .annotate(last=Max("date"))
            .values_list("ip_id", "last")
        )
        stats.last_sent_before.update(latest)
    return stats


def _load_suspensions(work: list[tuple[Plan, date, date]], rules: Rules) -> _Suspensions:
    """The suspensions a tick may consult for these plans' IPs, in one query.

    Those that ended before the oldest day a window or the escalation count can reach are left out
    (a suspension starts before it ends, so this keeps every one started within the escalation days).
    """
    suspensions = _Suspensions()
    if not work:
        return suspensions
    reach = max(rules.window_days, rules.provider_escalation_days) + 2  # + 2: any tenant's zone
    oldest = min(first for _, first, _ in work) - timedelta(days=reach)
    groups = Q()
    for key in {plan.last_ticked_date: plan for plan, _, _ in work}.values():
        groups |= _plan_key(key)
    since = datetime.combine(oldest, time(0), tzinfo=UTC)
    for suspension in ProviderSuspension.objects.filter(groups, ends_at__gte=since):
        suspensions.add(suspension)
    return suspensions


def _rate_window(
    plan: Plan, day: date, stats: _Stats, rules: Rules, *, provider: str | None = None, since: date | None = None
) -> dict | None:
    """Pool the finished days newest first until the sample is reached; None if it never is.

    With a `provider`, that provider's figures of the days, never before `since` (the day its last
    suspension ended); the same rules and thresholds apply.
    """
    oldest = day - timedelta(days=rules.window_days)
    for floor in (plan.window_start_date, since):
        if floor and floor > oldest:
            oldest = floor
    sent = delivered = bounced = complaints = 0
    current = day - timedelta(days=1)
    while current >= oldest:
        s, d, b, c = stats.get(plan.ip_id, current, provider)
        sent, delivered, bounced, complaints = sent + s, delivered + d, bounced + b, complaints + c
        if sent >= rules.min_sample:
            break
        current -= timedelta(days=1)
    if sent < rules.min_sample or sent == 0:
        return None
    bounce_rate = bounced * 100.0 / sent
    complaint_rate = complaints * 100.0 / delivered if delivered else 0.0
    trips = []
    if bounce_rate > rules.max_bounce_rate:
        trips.append("bounce_rate")
    if complaints >= rules.min_complaints and complaint_rate > rules.max_spam_rate:
        trips.append("complaint_rate")
    figures = {"provider": provider} if provider else {}
    return {
        **figures,
        "window_from": current.isoformat(),
        "window_to": (day - timedelta(days=1)).isoformat(),
        "window_days": (day - current).days,
        "sent": sent,
        "delivered": delivered,
        "bounced": bounced,
        "complaints": complaints,
        "bounce_rate": rate(bounced, sent),
        "complaint_rate": rate(complaints, delivered),
        "max_bounce_rate": rules.max_bounce_rate,
        "max_spam_rate": rules.max_spam_rate,
        "min_complaints": rules.min_complaints,
        "min_sample": rules.min_sample,
        "tripped": trips,
    }


def _rate_reasons(figures: dict, rules: Rules) -> list[str]:
    """The alert wording of the rates a window tripped."""
    if not {"bounce_rate", "complaint_rate"} & set(figures["tripped"]):
        return []
    first, last = date.fromisoformat(figures["window_from"]), date.fromisoformat(figures["window_to"])
    reasons = []
    if "bounce_rate" in figures["tripped"]:
        reasons.append(
            alerts.bounce_figures(
                rate=figures["bounce_rate"],
                threshold=rules.max_bounce_rate,
                sent=figures["sent"],
                first=first,
                last=last,
            )
        )
    if "complaint_rate" in figures["tripped"]:
        reasons.append(
            alerts.complaint_figures(
                rate=figures["complaint_rate"],
                threshold=rules.max_spam_rate,
                complaints=figures["complaints"],
                delivered=figures["delivered"],
                first=first,
                last=last,
            )
        )
    return reasons


def _auto_pause(plan: Plan, day: date, when: datetime, figures: dict, rules: Rules, changes: _Changes) -> None:
    """Rule 3: pause (and roll back one phase); the pause after the allowed resumes has no end.

    Also the escalation of repeated provider pauses (figures tripped "provider_pauses")."""
    from_phase, from_status = plan.phase, plan.status
    needs_attention = plan.auto_pause_count >= rules.max_auto_resumes
    plan.status = Plan.Status.PAUSED
    # Wall-clock arithmetic in the tenant's zone: 01:00 + 48 h is 01:00 two days later, even across DST.
    plan.paused_until = None if needs_attention else when + timedelta(hours=rules.pause_hours)
    plan.auto_pause_count += 1
    rolled_back = rules.rollback_on_pause and plan.phase_index > 0
    _phase_move(plan, plan.phase_index - 1 if rolled_back else plan.phase_index)
    reasons = _rate_reasons(figures, rules)
    if "provider_pauses" in figures["tripped"]:
        reasons.append(
            alerts.provider_pauses_figures(
                count=figures["provider_pauses"],
                days=figures["escalation_days"],
                pauses=[(p["provider"], date.fromisoformat(p["date"])) for p in figures["provider_suspensions"]],
            )
        )
    plan.pause_reason = " and ".join(reasons)
    figures = {
        **figures,
        "rolled_back": rolled_back,
        "paused_until": plan.paused_until.isoformat() if plan.paused_until else None,
        "needs_attention": needs_attention,
        "auto_pause_count": plan.auto_pause_count,
        "max_auto_resumes": rules.max_auto_resumes,
    }
    changes.plan(plan)
    changes.mirror_ip(plan)
    changes.event(
        plan,
        Kind.PAUSED,
        day=day,
        when=when,
        from_phase=from_phase,
        from_status=from_status,
        figures=figures,
        reason=plan.pause_reason,
    )
    if needs_attention:
        message = alerts.needs_attention_message(plan.ip, figures=plan.pause_reason, auto_pauses=plan.auto_pause_count)
        if rolled_back:
            message += f"; rolled back {from_phase} -> {plan.phase}"
        changes.alert(Alert.Kind.NEEDS_ATTENTION, plan, message, when=when, figures=figures)
    else:
        message = alerts.pause_message(
            plan.ip, figures=plan.pause_reason, from_phase=from_phase, to_phase=plan.phase, until=plan.paused_until
        )
        changes.alert(Alert.Kind.PAUSED, plan, message, when=when, figures=figures)


def _judge_providers(
    plan: Plan, day: date, when: datetime, stats: _Stats, rules: Rules, changes: _Changes, suspensions: _Suspensions
) -> dict | None:
    """Rule 3 per mailbox provider: pause each provider that trips; the figures of an IP pause when the
    provider pauses reach WARMUP_PROVIDER_PAUSES_BEFORE_IP_PAUSE, else None.

    A provider suspended at the tick's time is not judged, nor are its days before its last suspension
    ended: they are the figures it was already paused for.
    """
    zone = plan.ip.tenant.zone
    paused = []
    for provider in PROVIDERS:
        if suspensions.in_force(plan.ip_id, provider, when):
            continue
        ended = suspensions.last_end(plan.ip_id, provider, when)
        since = ended.astimezone(zone).date() if ended else None
        figures = _rate_window(plan, day, stats, rules, provider=provider, since=since)
        if figures and figures["tripped"]:
            _pause_provider(plan, day, when, figures, rules, changes, suspensions)
            paused.append(provider)
    if not paused:
        return None
    # Counted since the plan started or last resumed, so that pauses an escalation already acted upon
    # do not pause the IP again at the next provider pause after it resumes.
    since = when - timedelta(days=rules.provider_escalation_days)
    if plan.window_start_date:
        since = max(since, tick_time(plan.ip.tenant, plan.window_start_date, rules.tick_hour))
    recent = suspensions.threshold_started(plan.ip_id, since, when)
    if len(recent) < rules.provider_pauses_before_ip_pause:
        return None
    return {
        "tripped": ["provider_pauses"],
        "providers": paused,
        "provider_pauses": len(recent),
        "provider_pauses_before_ip_pause": rules.provider_pauses_before_ip_pause,
        "escalation_days": rules.provider_escalation_days,
        "provider_suspensions": [
            {
                "provider": s.provider,
                "date": s.starts_at.astimezone(zone).date().isoformat(),
                "starts_at": s.starts_at.isoformat(),
                "ends_at": s.ends_at.isoformat(),
            }
            for s in recent
        ],
    }


def _pause_provider(
    plan: Plan,
    day: date,
    when: datetime,
    figures: dict,
    rules: Rules,
    changes: _Changes,
    suspensions: _Suspensions,
) -> None:
    """Suspend one provider for the IP (its share 0 until the end); the plan's status and phase stay."""
    provider = figures["provider"]
    ends_at = when + timedelta(hours=rules.provider_pause_hours)
    figures = {**figures, "pause_hours": rules.provider_pause_hours, "suspended_until": ends_at.isoformat()}
    suspension = ProviderSuspension(
        ip=plan.ip,
        provider=provider,
        reason=ProviderSuspension.Reason.THRESHOLD,
        starts_at=when,
        ends_at=ends_at,
        figures=figures,
    )
    suspensions.add(suspension)
    changes.suspensions.append(suspension)
    text = " and ".join(_rate_reasons(figures, rules))
    changes.event(
        plan,
        Kind.PROVIDER_PAUSED,
        day=day,
        when=when,
        from_phase=plan.phase,
        from_status=plan.status,
        figures=figures,
        reason=f"{provider}: {text}",
    )
    changes.alert(
        Alert.Kind.PROVIDER_PAUSED,
        plan,
        alerts.provider_pause_message(plan.ip, provider=provider, figures=text, until=ends_at),
        when=when,
        figures=figures,
    )


def _rewarm(plan: Plan, day: date, when: datetime, last_sent: date | None, rules: Rules, changes: _Changes) -> None:
    """Rule 5: an active IP idle too long goes back to warming at week 3."""
    from_phase, from_status = plan.phase, plan.status
    plan.status = Plan.Status.WARMING
    _phase_move(plan, REWARM_PHASE_INDEX)
    plan.window_start_date = day
    plan.completed_on = None
    plan.auto_pause_count = 0
    changes.plan(plan)
    changes.mirror_ip(plan)
    figures = {
        "idle_days": rules.idle_rewarm_days,
        "last_sent_date": last_sent.isoformat() if last_sent else None,
        "daily_quota": plan.phase_quota,
    }
    changes.event(
        plan, Kind.REWARMED, day=day, when=when, from_phase=from_phase, from_status=from_status, figures=figures
    )
    changes.alert(
        Alert.Kind.REWARMED,
        plan,
        alerts.rewarm_message(plan.ip, idle_days=rules.idle_rewarm_days, phase=plan.phase, quota=plan.phase_quota),
        when=when,
        figures=figures,
    )


def _process_day(
    plan: Plan, day: date, stats: _Stats, rules: Rules, changes: _Changes, suspensions: _Suspensions
) -> None:
    """Process date `day` for one plan (judging the finished day before it)."""
    when = tick_time(plan.ip.tenant, day, rules.tick_hour)
    if plan.status == Plan.Status.SCHEDULED:
        if day >= plan.start_date:
            start_plan(plan, day, when, changes)
        return
    if plan.status == Plan.Status.PAUSED:
        if plan.paused_until is not None and plan.paused_until <= when:
            _resume(plan, day, when, changes)
        return
    if plan.status == Plan.Status.WARMING:
        # The plan was warming through day-1 (a start or resume today returned above), at this quota.
        quota = plan.phase_quota
        figures = _rate_window(plan, day, stats, rules)
        if figures and figures["tripped"]:
            _auto_pause(plan, day, when, figures, rules, changes)
            return
        escalation = _judge_providers(plan, day, when, stats, rules, changes, suspensions)
        if escalation:
            _auto_pause(plan, day, when, escalation, rules, changes)
            return
        yesterday = day - timedelta(days=1)
        sent = stats.get(plan.ip_id, yesterday)[0]
        if sent < rules.min_utilization * quota:
            return
        plan.phase_day_count += 1
        changes.plan(plan)
        if plan.phase_day_count < plan.phase_days:
            return
        progress = {
            "qualifying_days": plan.phase_day_count,
            "last_day_sent": sent,
            "quota": quota,
            "min_utilization": rules.min_utilization,
        }
        if plan.phase_index + 1 >= len(plan.steps):
            _complete(plan, day, when, changes, kind=Kind.COMPLETED, figures=progress)
            return
        from_phase = plan.phase
        _phase_move(plan, plan.phase_index + 1)
        progress["daily_quota"] = plan.phase_quota
        changes.event(
            plan, Kind.ADVANCED, day=day, when=when, from_phase=from_phase, from_status=plan.status, figures=progress
        )
        return
    if plan.status == Plan.Status.COMPLETED and plan.ip.status == IP.Status.ACTIVE:
        idle_since = day - timedelta(days=rules.idle_rewarm_days)
        if plan.completed_on is None or idle_since < plan.completed_on:
            return
        last_sent = stats.last_sent(plan.ip_id, day)
        if last_sent is None or last_sent < idle_since:
            _rewarm(plan, day, when, last_sent, rules, changes)


def tick(as_of: date | None = None, *, tenants=None, now: datetime | None = None) -> TickReport:
    """Run the daily tick up to `as_of` (default: each tenant's latest date past 01:00 local).

    Idempotent and catching up; see the module docstring. Safe to run concurrently: the plans are
    locked, so a second tick waits and then finds them already processed.
    """
    now = now or timezone.now()
    rules = Rules.current()
    # Judged days must be consolidated first (consolidation is idempotent and has its own transactions).
    consolidate(now=now)
    report = TickReport()
    # The latest date any tenant may reach: bounds the lock to plans with work.
    horizon = as_of or (now + timedelta(days=1)).date()
    changes = _Changes()
    with transaction.atomic():
        candidates = (
            Plan.objects.live()
            .filter(Q(last_ticked_date__isnull=True) | Q(last_ticked_date__lt=horizon))
            .exclude(status=Plan.Status.SCHEDULED, start_date__gt=horizon)
        )
        if tenants is not None:
            candidates = candidates.filter(ip__tenant__in=tenants)
        # Lock first (in id order, so that concurrent ticks never deadlock), then read: the read is a new
        # statement, so after waiting for another tick it sees that tick's committed changes.
        ids = list(candidates.select_for_update(of=("self",)).order_by("pk").values_list("pk", flat=True))
        if not ids:
            return report
        plans = list(Plan.objects.filter(pk__in=ids).select_related("ip__domain", "ip__tenant").order_by("pk"))
        _share_related(plans)
        changes.remember(plans)
        days: dict[int, date] = {}
        work: list[tuple[Plan, date, date]] = []
        for plan in plans:
            tenant = plan.ip.tenant
            if tenant.pk not in days:
                days[tenant.pk] = as_of or tick_date(tenant, now, rules.tick_hour)
            last = days[tenant.pk]
            first = plan.last_ticked_date + timedelta(days=1) if plan.last_ticked_date else plan.start_date
            if plan.status == Plan.Status.SCHEDULED:
                first = max(first, plan.start_date)
            if first <= last:
                work.append((plan, first, last))
        stats = _load_stats(work, rules)
        suspensions = _load_suspensions(work, rules)
        dates: set[date] = set()
        for plan, first, last in work:
            if plan.ip.status != IP.Status.RETIRED:
                for day in day_range(first, last):
                    _process_day(plan, day, stats, rules, changes, suspensions)
                dates.update(day_range(first, last))
            plan.last_ticked_date = last
            changes.plan(plan)
        changes.flush(now)
    report.dates = sorted(dates)
    report.plans_processed = len(work)
    report.events = changes.events
    return report


def _share_related(plans: list[Plan]) -> None:
    """One Domain and one Tenant object per row, so that changes made through one IP are seen by all."""
    domains: dict[int, Domain] = {}
    tenants: dict[int, Tenant] = {}
    domain_field, tenant_field = IP._meta.get_field("domain"), IP._meta.get_field("tenant")
    for plan in plans:
        ip = plan.ip
        # Through the field cache rather than the descriptors: the same, without their checks.
        domain_field.set_cached_value(ip, domains.setdefault(ip.domain_id, ip.domain))
        tenant_field.set_cached_value(ip, tenants.setdefault(ip.tenant_id, ip.tenant))


# --- Manual actions -----------------------------------------------------------------------------


def _refuse_unless(plan: Plan, allowed: tuple[str, ...], action: str) -> None:
    if plan.status not in allowed:
        wanted = " or ".join(str(Plan.Status(s).label).lower() for s in allowed)
        raise ActionRefused(f"Cannot {action}: the plan is {plan.get_status_display().lower()}, not {wanted}.")


def _manual_pause(plan, day, when, changes, actor, reason):
    _refuse_unless(plan, (Plan.Status.WARMING,), "pause")
    from_phase, from_status = plan.phase, plan.status
    plan.status = Plan.Status.PAUSED
    plan.paused_until = None
    plan.pause_reason = reason or "Paused by hand."
    changes.plan(plan)
    changes.mirror_ip(plan)
    return changes.event(
        plan,
        Kind.MANUAL_PAUSE,
        day=day,
        when=when,
        from_phase=from_phase,
        from_status=from_status,
        reason=plan.pause_reason,
        actor=actor,
    )


def _manual_resume(plan, day, when, changes, actor, reason):
    _refuse_unless(plan, (Plan.Status.PAUSED,), "resume")
    return _resume(plan, day, when, changes, manual=True, actor=actor, reason=reason)


def _manual_rollback(plan, day, when, changes, actor, reason):
    _refuse_unless(plan, (Plan.Status.WARMING, Plan.Status.PAUSED), "roll back")
    if plan.phase_index == 0:
        raise ActionRefused("Cannot roll back: the plan is already in its first phase.")
    # Rates are judged afresh from the rollback on (PRODUCT.md section 5, rule 3).
    return _manual_phase_move(plan, -1, Kind.MANUAL_ROLLBACK, day, when, changes, actor, reason, window_from=day)


def _manual_advance(plan, day, when, changes, actor, reason):
    _refuse_unless(plan, (Plan.Status.WARMING, Plan.Status.PAUSED), "advance")
    if plan.phase_index + 1 >= len(plan.steps):
        raise ActionRefused("Cannot advance: the plan is in its last phase (use complete).")
    return _manual_phase_move(plan, +1, Kind.MANUAL_ADVANCE, day, when, changes, actor, reason)


def _manual_phase_move(plan, step, kind, day, when, changes, actor, reason, window_from=None):
    """Move the plan `step` phases (one back or one forward) for a person, with its audit event."""
    from_phase, from_status = plan.phase, plan.status
    _phase_move(plan, plan.phase_index + step)
    if window_from is not None:
        plan.window_start_date = window_from
    changes.plan(plan)
    return changes.event(
        plan,
        kind,
        day=day,
        when=when,
        from_phase=from_phase,
        from_status=from_status,
        figures={"daily_quota": plan.phase_quota},
        reason=reason,
        actor=actor,
    )


def _manual_complete(plan, day, when, changes, actor, reason):
    _refuse_unless(plan, (Plan.Status.SCHEDULED, Plan.Status.WARMING, Plan.Status.PAUSED), "complete")
    return _complete(plan, day, when, changes, kind=Kind.MANUAL_COMPLETE, figures={}, actor=actor, reason=reason)


def _manual_cancel(plan, day, when, changes, actor, reason):
    _refuse_unless(plan, (Plan.Status.SCHEDULED, Plan.Status.WARMING, Plan.Status.PAUSED), "cancel")
    from_phase, from_status = plan.phase, plan.status
    plan.status = Plan.Status.CANCELLED
    plan.paused_until = None
    changes.plan(plan)
    changes.mirror_ip(plan)
    return changes.event(
        plan,
        Kind.MANUAL_CANCEL,
        day=day,
        when=when,
        from_phase=from_phase,
        from_status=from_status,
        reason=reason,
        actor=actor,
    )


_HANDLERS = {
    "pause": _manual_pause,
    "resume": _manual_resume,
    "rollback": _manual_rollback,
    "advance": _manual_advance,
    "complete": _manual_complete,
    "cancel": _manual_cancel,
}


def perform(plan: Plan, action: str, *, user=None, reason: str = "", now: datetime | None = None) -> AuditEvent:
    """Apply a manual action to a plan, recorded with the acting user; ActionRefused says why not."""
    if action not in _HANDLERS:
        raise ActionRefused(f"Unknown action {action!r}: use one of {', '.join(ACTIONS)}.")
    now = now or timezone.now()
    changes = _Changes()
    with transaction.atomic():
        locked = Plan.objects.select_for_update(of=("self",)).select_related("ip__domain", "ip__tenant").get(pk=plan.pk)
        day = now.astimezone(locked.ip.tenant.zone).date()
        event = _HANDLERS[action](locked, day, now, changes, user, reason)
        verb = {
            "rollback": "rolled back",
            "advance": "advanced",
            "complete": "completed",
            "cancel": "cancelled",
            "pause": "paused",
            "resume": "resumed",
        }[action]
        who = (user.get_username() if user is not None and hasattr(user, "get_username") else "") or "system"
        text = (
            f"{alerts.headline(Alert.Kind.MANUAL, verb.capitalize() + ' by ' + who, locked.ip)}: "
            f"now {locked.phase}, {locked.get_status_display().lower()}, quota {locked.daily_quota:,}/day"
        )
        changes.alert(
            Alert.Kind.MANUAL,
            locked,
            text + (f"; {reason}" if reason else ""),
            when=now,
            figures={"action": action},
        )
        changes.flush(now)
    for name in PLAN_FIELDS:
        setattr(plan, name, getattr(locked, name))
    if plan.ip_id == locked.ip_id and "ip" in plan._state.fields_cache:
        plan.ip.status, plan.ip.weight = locked.ip.status, locked.ip.weight
    return event


def perform_many(plans, action: str, *, user=None, reason: str = "") -> tuple[int, list[tuple[Plan, str]]]:
    """Apply an action to several plans, each in its own transaction: (number done, [(plan, refusal)])."""
    done = 0
    refused: list[tuple[Plan, str]] = []
    for plan in plans:
        try:
            perform(plan, action, user=user, reason=reason)
        except ActionRefused as exc:
            refused.append((plan, str(exc)))
        else:
            done += 1
    return done, refused
