"""The one way tests build data: factory_boy factories for the inventory and the warmup."""

import datetime as dt

import factory
from django.contrib.auth import get_user_model
from django.utils import timezone

from domains.models import IP, Domain, Tenant
from warmup.models import DailyStat, WarmupPlan


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.com")
    password = factory.django.Password("correct horse battery staple")
    is_staff = True


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
