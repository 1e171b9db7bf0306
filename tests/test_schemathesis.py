"""The API against its own OpenAPI schema, with generated requests (schemathesis, property-based).

Every operation of /api/schema/ is called in-process through the WSGI application, authenticated as a
member of one tenant (DRF token), with data that hypothesis generates from the schema: no answer may
be a 5xx, and every answer must conform to the schema (status code documented, content type, body).
The example budget keeps the run well under a minute on two cores.
"""

import datetime as dt

import pytest
import schemathesis
import time_machine
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, Phase
from hypothesis import settings as hypothesis_settings
from rest_framework.authtoken.models import Token
from schemathesis.specs.openapi.checks import positive_data_acceptance

from .factories import DailyStatFactory, DomainFactory, TenantFactory, UserFactory, plan_in_state

NOW = dt.datetime(2027, 2, 15, 12, 0, tzinfo=dt.UTC)
TODAY = NOW.date()
MAX_EXAMPLES = 40


@pytest.fixture
def member_token(db, redis_client, settings) -> str:
    """A member of "sos-expat" (warming, active, paused and scheduled IPs with stats); another tenant too."""
    settings.WARMUP_DRY_RUN = True
    tenant = TenantFactory(slug="sos-expat", name="SOS-Expat", time_zone="Europe/Paris")
    other = TenantFactory(slug="other", name="Other")
    plans = [
        plan_in_state("completed", domain=DomainFactory(tenant=tenant), address="45.123.10.1"),
        plan_in_state("warming", tenant=tenant, address="45.123.10.2", phase="week_2", today=TODAY),
        plan_in_state("paused", tenant=tenant, address="45.123.10.3", paused_until=None, today=TODAY),
        plan_in_state("scheduled", tenant=tenant, address="2001:db8::4", today=TODAY),
        plan_in_state("warming", tenant=other, address="198.51.100.7", today=TODAY),
    ]
    for plan in plans:
        DailyStatFactory(ip=plan.ip, date=TODAY - dt.timedelta(days=1), sent=190, bounced=2, complaints=1)
    user = UserFactory(username="operator")
    tenant.members.add(user)
    return Token.objects.create(user=user).key


def load_schema():
    """The schema as the running portal serves it (generating it needs no database)."""
    from warmup_portal.wsgi import application

    return schemathesis.openapi.from_wsgi("/api/schema/?format=json", application)


schema = load_schema()


@pytest.fixture(autouse=True)
def keep_the_test_connection():
    """The real WSGI handler closes database connections around each request; the test's data lives in
    its open transaction, so (as Django's own test client does) stop that for the test."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture(autouse=True)
def frozen_clock():
    with time_machine.travel(NOW, tick=False):
        yield


@schema.parametrize()
@hypothesis_settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,  # the same examples on every run: a failure is reproducible, never flaky
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_every_operation_answers_as_its_schema_says_and_never_with_a_5xx(case, member_token):
    response = case.call_and_validate(
        headers={"Authorization": f"Token {member_token}"},
        # "Any schema-valid request is accepted" cannot hold for an API that validates meaning (an
        # address string that is no IP, a tenant that is not the caller's, an action refused in the
        # plan's state): those are 400/404/409 by design, and each is tested in tests/test_api.py.
        excluded_checks=[positive_data_acceptance],
    )
    assert response.status_code < 500
