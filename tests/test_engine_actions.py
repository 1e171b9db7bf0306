"""Manual actions on a plan: pause, resume, roll back, advance, complete, cancel."""

import datetime as dt

import pytest
import time_machine

from domains.models import IP, Domain
from warmup import engine
from warmup.models import Alert, AuditEvent, WarmupPlan

from .factories import UserFactory
from .test_engine import START, fresh, warming_plan

Plan = WarmupPlan
NOW = dt.datetime(2027, 1, 20, 14, 0, tzinfo=dt.UTC)


@pytest.fixture
def operator(db, settings):
    return UserFactory(username="operator")


@pytest.mark.django_db
def test_pause_has_no_end_and_records_the_user_and_reason(operator):
    plan = warming_plan(phase=Plan.Phase.WEEK_3)
    event = engine.perform(plan, "pause", user=operator, reason="blocklisted at Spamhaus", now=NOW)
    assert (event.kind, event.actor, event.reason) == ("manual_pause", operator, "blocklisted at Spamhaus")
    assert (event.from_status, event.to_status) == ("warming", "paused")
    assert event.date == NOW.date()
    plan = fresh(plan)
    assert plan.status == Plan.Status.PAUSED
    assert plan.paused_until is None
    assert plan.needs_attention
    assert plan.pause_reason == "blocklisted at Spamhaus"
    assert plan.ip.status == IP.Status.PAUSED
    assert engine.ip_daily_quota(plan.ip) == 0
    assert Alert.objects.filter(kind=Alert.Kind.MANUAL, ip=plan.ip).exists()


@pytest.mark.django_db
def test_resume_resets_the_automatic_pause_count_and_the_rate_window(operator):
    plan = warming_plan(status=Plan.Status.PAUSED, phase=Plan.Phase.WEEK_2, auto_pause_count=4, phase_day_count=3)
    event = engine.perform(plan, "resume", user=operator, now=NOW)
    assert (event.kind, event.actor) == ("manual_resume", operator)
    assert plan.status == Plan.Status.WARMING  # the caller's object is brought up to date
    plan = fresh(plan)
    assert plan.status == Plan.Status.WARMING
    assert plan.phase == Plan.Phase.WEEK_2
    assert plan.auto_pause_count == 0
    assert plan.phase_day_count == 0
    assert plan.window_start_date == NOW.date()
    assert plan.ip.status == IP.Status.WARMING


@pytest.mark.django_db
def test_rollback_and_advance_move_one_phase(operator):
    plan = warming_plan(phase=Plan.Phase.WEEK_3, phase_day_count=4)
    engine.perform(plan, "rollback", user=operator, now=NOW)
    plan = fresh(plan)
    assert (plan.phase, plan.phase_day_count, plan.window_start_date) == ("week_2", 0, NOW.date())
    engine.perform(plan, "advance", user=operator, now=NOW)
    engine.perform(plan, "advance", user=operator, now=NOW)
    assert fresh(plan).phase == "week_4"
    kinds = list(AuditEvent.objects.filter(plan=plan).order_by("id").values_list("kind", "from_phase", "to_phase"))
    assert kinds == [
        ("manual_rollback", "week_3", "week_2"),
        ("manual_advance", "week_2", "week_3"),
        ("manual_advance", "week_3", "week_4"),
    ]


@pytest.mark.django_db
def test_complete_now_makes_the_ip_and_its_domain_active(operator):
    plan = warming_plan(phase=Plan.Phase.WEEK_2)
    event = engine.perform(plan, "complete", user=operator, now=NOW)
    assert event.kind == "manual_complete"
    plan = fresh(plan)
    assert plan.status == Plan.Status.COMPLETED
    assert plan.completed_on == NOW.date()
    assert plan.ip.status == IP.Status.ACTIVE
    assert plan.ip.weight == 100
    assert plan.ip.domain.status == Domain.Status.ACTIVE
    assert engine.ip_daily_quota(plan.ip) == 10000


@pytest.mark.django_db
def test_cancel_stops_the_plan(operator):
    plan = warming_plan()
    engine.perform(plan, "cancel", user=operator, now=NOW)
    plan = fresh(plan)
    assert plan.status == Plan.Status.CANCELLED
    assert plan.ip.status == IP.Status.PENDING
    assert engine.ip_daily_quota(plan.ip) == 0
    # A cancelled plan is no longer ticked.
    assert engine.tick(as_of=START + dt.timedelta(days=3), now=NOW).plans_processed == 0


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("status", "phase", "action", "message"),
    [
        (Plan.Status.PAUSED, "week_2", "pause", "the plan is paused, not warming"),
        (Plan.Status.WARMING, "week_2", "resume", "the plan is warming, not paused"),
        (Plan.Status.WARMING, "week_1", "rollback", "already in its first phase"),
        (Plan.Status.WARMING, "week_6", "advance", "last phase (use complete)"),
        (Plan.Status.COMPLETED, "completed", "complete", "the plan is completed"),
        (Plan.Status.CANCELLED, "week_1", "cancel", "the plan is cancelled"),
        (Plan.Status.WARMING, "week_1", "explode", "Unknown action 'explode'"),
    ],
)
def test_actions_the_state_does_not_allow_are_refused(operator, status, phase, action, message):
    plan = warming_plan(status=status, phase=phase)
    before = fresh(plan)
    with pytest.raises(engine.ActionRefused, match=message.replace("(", r"\(").replace(")", r"\)")):
        engine.perform(plan, action, user=operator, now=NOW)
    after = fresh(plan)
    assert (after.status, after.phase, after.updated_at) == (before.status, before.phase, before.updated_at)
    assert not AuditEvent.objects.filter(plan=plan).exists()


@pytest.mark.django_db
def test_perform_many_reports_what_was_done_and_what_was_refused(operator):
    ok1, ok2 = warming_plan(), warming_plan()
    refused = warming_plan(status=Plan.Status.PAUSED)
    with time_machine.travel(NOW, tick=False):
        done, refusals = engine.perform_many(
            Plan.objects.filter(pk__in=[ok1.pk, ok2.pk, refused.pk]).order_by("pk"), "pause", user=operator
        )
    assert done == 2
    assert [(plan.pk, "not warming" in message) for plan, message in refusals] == [(refused.pk, True)]
    assert AuditEvent.objects.filter(kind="manual_pause", actor=operator).count() == 2
