"""The one way tests build data: factory_boy factories for the inventory and the warmup."""

import datetime as dt

import factory
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.utils import timezone

from domains.models import IP, Domain, Tenant
from warmup.models import Alert, AuditEvent, DailyStat, WarmupPlan
from webhooks.models import DeadLetter


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.com")
    password = factory.django.Password("correct horse battery staple")
    is_staff = True


def make_member(username: str, *tenants):
    """A staff user who belongs to the tenants, with every permission of the portal's apps."""
    user = UserFactory(username=username, is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label__in=("domains", "warmup", "webhooks")))
    for tenant in tenants:
        tenant.members.add(user)
    return user


class TenantFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Tenant
        django_get_or_create = ("slug",)

    name = factory.Sequence(lambda n: f"Tenant {n}")
    slug = factory.Sequence(lambda n: f"tenant-{n}")
    time_zone = "UTC"


class DomainFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Domain

    tenant = factory.SubFactory(TenantFactory)
    name = factory.Sequence(lambda n: f"mail{n}.example.com")


class IPFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = IP

    domain = factory.SubFactory(DomainFactory)
    tenant = factory.SelfAttribute("domain.tenant")
    address = factory.Sequence(lambda n: f"10.{(n // 65536) % 256}.{(n // 256) % 256}.{n % 256}")


class WarmupPlanFactory(factory.django.DjangoModelFactory):
    """A plan in its first phase; pass status/phase/start_date for other states."""

    class Meta:
        model = WarmupPlan

    ip = factory.SubFactory(IPFactory)
    steps = factory.LazyFunction(lambda: [50, 200, 500, 1500, 5000, 10000])
    phase_days = 7
    start_date = factory.LazyFunction(lambda: timezone.now().date())


class DailyStatFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = DailyStat

    ip = factory.SubFactory(IPFactory)
    date = factory.LazyFunction(lambda: timezone.now().date() - dt.timedelta(days=1))
    sent = 100
    delivered = factory.LazyAttribute(lambda s: s.sent - s.bounced)
    bounced = 0


class AuditEventFactory(factory.django.DjangoModelFactory):
    """A system event of a plan; pass kind, date and the to_phase/to_status it set."""

    class Meta:
        model = AuditEvent

    plan = factory.SubFactory(WarmupPlanFactory)
    date = factory.LazyFunction(lambda: timezone.now().date())
    created_at = factory.LazyFunction(timezone.now)
    kind = AuditEvent.Kind.STARTED
    to_phase = "week_1"
    to_status = "warming"


_IP_STATUS_OF_PLAN = {"scheduled": "pending", "warming": "warming", "paused": "paused", "completed": "active"}


def plan_in_state(
    status: str = "warming",
    *,
    tenant=None,
    address: str | None = None,
    domain=None,
    hostname: str = "",
    mta_source_name: str = "",
    today: dt.date | None = None,
    **plan_fields,
) -> WarmupPlan:
    """An IP with its plan as the engine would have left it, built without running the engine.

    `status` is the plan's: "scheduled" (IP pending, starting in 7 days), "warming" (IP warming, pass
    `phase`; ticked today), "paused" (IP paused; pass `paused_until`, None: needs attention),
    "completed" (IP active at weight 100, completed after 42 days). Other plan fields override these.
    """
    today = today or timezone.now().date()
    ip_fields = {"status": _IP_STATUS_OF_PLAN[status], "hostname": hostname, "mta_source_name": mta_source_name}
    ip_fields["weight"] = 100 if status == "completed" else 0
    if address:
        ip_fields["address"] = address
    if domain is not None:
        ip_fields["domain"] = domain
    elif tenant is not None:
        ip_fields["domain__tenant"] = tenant
    ip = IPFactory(**ip_fields)
    fields = {"status": status, "start_date": today - dt.timedelta(days=10), "last_ticked_date": today}
    if status == "scheduled":
        fields.update(start_date=today + dt.timedelta(days=7), last_ticked_date=None)
    elif status == "completed":
        fields.update(phase="completed", start_date=today - dt.timedelta(days=60))
    elif status == "paused":
        fields.update(pause_reason="bounce rate over the threshold")
    fields.update(plan_fields)
    if status == "completed":
        fields.setdefault("completed_on", fields["start_date"] + dt.timedelta(days=42))
    return WarmupPlanFactory(ip=ip, **fields)


class AlertFactory(factory.django.DjangoModelFactory):
    """A recorded alert about an IP (its tenant follows the IP)."""

    class Meta:
        model = Alert

    ip = factory.SubFactory(IPFactory)
    tenant = factory.SelfAttribute("ip.tenant")
    kind = Alert.Kind.PAUSED
    message = factory.LazyAttribute(lambda a: f"{a.ip.address} paused: bounce rate 7.0% > 5.0%")
    created_at = factory.LazyFunction(timezone.now)


class DeadLetterFactory(factory.django.DjangoModelFactory):
    """An unattributed event kept for re-processing."""

    class Meta:
        model = DeadLetter

    tenant = factory.SubFactory(TenantFactory)
    source = "events"
    reason = DeadLetter.Reason.UNKNOWN_IP
    error = "IP not known to the tenant"
    raw = factory.LazyFunction(lambda: {"type": "delivered", "ip": "192.0.2.1"})
