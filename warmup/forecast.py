"""Capacity forecast: a tenant's daily sending capacity day by day, assuming clean warmups from today.

PRODUCT.md section 7 "Forecast". Every running, paused and scheduled plan follows the engine's clean
timeline (each day at full quota qualifies; WARMUP_PHASE_DAYS qualifying days per phase; a paused
plan resumes when its pause ends, one that waits for a person stays at 0), and planned additions
start on the earliest dates the rotation rule allows. Day 1 is today; each day shows the state in
force after that day's tick, as the simulator does. Pure computation: two reads, no writes.
"""

from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from django.conf import settings

from domains.models import IP, Tenant

from .engine import ip_daily_quota
from .models import WarmupPlan, WarmupSchedule
from .monitoring import plan_of

# The simulated states, named as the forecast's per-day columns are.
SCHEDULED, WARMING, PAUSED, ACTIVE = "scheduled", "warming", "paused", "active"
COLUMNS = (ACTIVE, WARMING, PAUSED, SCHEDULED)


@dataclass(slots=True)
class _Course:
    """One IP's simulated course under clean sending.

    `steps` empty: an IP without a live plan, which nothing moves; it keeps its state and `fixed_quota`.
    """

    state: str | None  # a column name; None: counted in no column (a pending IP without a plan)
    steps: list[int]
    phase_days: int = 1
    phase_index: int = 0
    day_count: int = 0
    start_date: date | None = None
    paused_until: datetime | None = None  # None while paused: waits for a person
    first_tick: date | None = None  # the first date the forecast still has to process
    fixed_quota: int = 0

    @property
    def quota(self) -> int:
        if not self.steps:
            return self.fixed_quota
        if self.state == WARMING:
            return self.steps[self.phase_index]
        if self.state == ACTIVE:
            return self.steps[-1]
        return 0

    @property
    def settled(self) -> bool:
        """Nothing changes any more under clean sending."""
        return not self.steps or self.state == ACTIVE or (self.state == PAUSED and self.paused_until is None)

    def tick(self, day: date, tick_time: datetime) -> None:
        """The engine's tick for `day` under clean sending (PRODUCT.md section 5, steps 1, 2 and 4)."""
        if day < self.first_tick:
            return
        if self.state == SCHEDULED:
            if day >= self.start_date:
                self.state, self.phase_index, self.day_count = WARMING, 0, 0
        elif self.state == PAUSED:
            if self.paused_until is not None and self.paused_until <= tick_time:
                # Resumed in the phase set at pause time; the day before was a paused day: no credit.
                self.state, self.day_count = WARMING, 0
        elif self.state == WARMING and day - timedelta(days=1) >= self.start_date:
            # The judged day (the day before) was a warming day at full quota: it qualifies.
            self.day_count += 1
            if self.day_count >= self.phase_days:
                if self.phase_index >= len(self.steps) - 1:
                    self.state = ACTIVE
                else:
                    self.phase_index, self.day_count = self.phase_index + 1, 0


_PLAN_STATE = {
    WarmupPlan.Status.SCHEDULED: SCHEDULED,
    WarmupPlan.Status.WARMING: WARMING,
    WarmupPlan.Status.PAUSED: PAUSED,
    WarmupPlan.Status.COMPLETED: ACTIVE,
}
_IP_STATE = {IP.Status.ACTIVE: ACTIVE, IP.Status.WARMING: WARMING, IP.Status.PAUSED: PAUSED}


def _course_of(ip: IP, today: date) -> _Course:
    plan = plan_of(ip)
    if plan is None or plan.status not in _PLAN_STATE:
        return _Course(state=_IP_STATE.get(ip.status), steps=[], fixed_quota=ip_daily_quota(ip))
    # A plan already ticked for today shows today's state as stored; otherwise today's tick is still
    # to come (before 01:00, or the beat is late) and the forecast runs it.
    if plan.last_ticked_date is not None and plan.last_ticked_date >= today:
        first_tick = plan.last_ticked_date + timedelta(days=1)
    else:
        first_tick = today
    return _Course(
        state=_PLAN_STATE[plan.status],
        steps=list(plan.steps),
        phase_days=max(1, plan.phase_days),
        phase_index=min(plan.phase_index, len(plan.steps) - 1),
        day_count=plan.phase_day_count,
        start_date=plan.start_date,
        paused_until=plan.paused_until,
        first_tick=first_tick,
    )


def _default_steps() -> tuple[list[int], int]:
    """The steps and phase length new plans would get (without creating the default schedule)."""
    schedule = WarmupSchedule.objects.filter(is_default=True).only("steps", "phase_days").first()
    if schedule is not None:
        return list(schedule.steps), max(1, schedule.phase_days)
    return list(settings.WARMUP_DEFAULT_STEPS), max(1, settings.WARMUP_PHASE_DAYS)


def _rotation_allows(starts: Counter, day: date, per_week: int) -> bool:
    """Whether one more start on `day` keeps every 7-day window containing it at `per_week` starts."""
    for first in (day - timedelta(days=back) for back in range(7)):
        if sum(starts[first + timedelta(days=i)] for i in range(7)) >= per_week:
            return False
    return True


def plan_additions(starts: Counter, *, first: date, last: date, per_week: int, count: int | None) -> list[date]:
    """Start dates for `count` new plans (None: as many as fit) from `first` to `last`.

    Each on the earliest date that the rotation rule (at most `per_week` starts in any 7 days,
    counting the existing plans' start dates in `starts`) allows, as onboarding's earliest_start does.
    """
    starts = Counter(starts)
    added: list[date] = []
    day = first
    while per_week > 0 and day <= last and (count is None or len(added) < count):
        if _rotation_allows(starts, day, per_week):
            starts[day] += 1
            added.append(day)
        else:
            day += timedelta(days=1)
    return added


def forecast(
    tenant: Tenant,
    *,
    days: int = 365,
    add_per_week: int | None = None,
    target_ips: int | None = None,
    today: date | None = None,
) -> dict:
    """The forecast JSON of PRODUCT.md section 7.

    `add_per_week` defaults to WARMUP_MAX_NEW_IPS_PER_WEEK and is capped by it. `target_ips` is the
    total of non-retired IPs to reach; without it additions go on through the whole horizon and the
    target is the number reached at its end.
    """
    if days < 1:
        raise ValueError("days must be at least 1")
    limit = settings.WARMUP_MAX_NEW_IPS_PER_WEEK
    per_week = limit if add_per_week is None else max(0, min(add_per_week, limit))
    today = today or tenant.today()
    last_day = today + timedelta(days=days - 1)

    ips = list(IP.objects.for_tenant(tenant).not_retired().select_related("plan"))
    courses = [_course_of(ip, today) for ip in ips]
    steps, phase_days = _default_steps()

    # The rotation rule counts every plan that started or will start, whatever became of it since.
    starts = Counter(
        plan.start_date for plan in map(plan_of, ips) if plan is not None and plan.status != WarmupPlan.Status.CANCELLED
    )
    wanted = None if target_ips is None else max(0, target_ips - len(ips))
    for start in plan_additions(starts, first=today, last=last_day, per_week=per_week, count=wanted):
        courses.append(_Course(state=SCHEDULED, steps=steps, phase_days=phase_days, start_date=start, first_tick=today))
    target = len(courses) if target_ips is None else target_ips
    target_capacity = target * steps[-1]

    moving = [course for course in courses if not course.settled]
    settled_counts: Counter = Counter()
    settled_capacity = 0
    for course in courses:
        if course.settled:
            settled_counts[course.state] += 1
            settled_capacity += course.quota

    rows, reached_on = [], None
    for index in range(days):
        day = today + timedelta(days=index)
        tick_time = datetime.combine(day, time(settings.WARMUP_TICK_HOUR), tzinfo=tenant.zone)
        counts, capacity, still_moving = Counter(settled_counts), settled_capacity, []
        for course in moving:
            course.tick(day, tick_time)
            counts[course.state] += 1
            capacity += course.quota
            if course.settled:
                # Settled from now on: counted once for every later day.
                settled_counts[course.state] += 1
                settled_capacity += course.quota
            else:
                still_moving.append(course)
        moving = still_moving
        if reached_on is None and capacity >= target_capacity:
            reached_on = day
        rows.append({"day": index + 1, "date": day.isoformat(), **{c: counts[c] for c in COLUMNS}})
        rows[-1]["total_daily_capacity"] = capacity

    return {
        "tenant": tenant.slug,
        "target_ips": target,
        "target_capacity": target_capacity,
        "target_reached_on": reached_on.isoformat() if reached_on else None,
        "days": rows,
    }
