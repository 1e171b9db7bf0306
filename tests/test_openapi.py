"""The OpenAPI 3 schema (/api/schema/), the docs page (/api/docs/), and every API endpoint answering
as the schema documents it, walked with the demo tenant's data."""

import datetime as dt
from io import StringIO

import jsonschema
import pytest
import time_machine
from django.core.management import call_command
from drf_spectacular.validation import validate_schema
from rest_framework.test import APIClient

from .factories import DailyStatFactory, DomainFactory, UserFactory, plan_in_state

NOW = dt.datetime(2027, 2, 15, 12, 0, tzinfo=dt.UTC)
TODAY = NOW.date()

pytestmark = pytest.mark.django_db

# What the walk sends to each operation: path parameters, query string and body.
PATH_VALUES = {"address": "45.123.10.6", "action": "pause"}
REQUESTS = {
    "warmup_status": {"query": "?tenant=sos-expat"},
    "ip_stats": {"query": f"?from={TODAY - dt.timedelta(7)}&to={TODAY}"},
    "ip_stats_record": {"body": {"sent": 40, "delivered": 39, "bounced": 1}},
    "domains_create": {"body": {"tenant": "sos-expat", "domain": "mail7.sos-mail.com", "ip": "45.123.10.7"}},
    "plan_action": {"body": {"reason": "checking the blocklists"}},
    "forecast": {"query": "?days=60&target_ips=8"},
    "pmta_config": {"query": "?tenant=sos-expat"},
    "kumomta_config": {"query": "?tenant=sos-expat"},
}
EXPECTED_STATUS = {"domains_create": 201}


@pytest.fixture(autouse=True)
def frozen_clock():
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.fixture
def demo(tenant, settings):
    """The demo tenant: mail1..5.sos-mail.com active on 45.123.10.1..5, mail6 in week_2, with stats."""
    for n in range(1, 6):
        domain = DomainFactory(tenant=tenant, name=f"mail{n}.sos-mail.com", status="active")
        plan_in_state("completed", domain=domain, address=f"45.123.10.{n}")
    domain = DomainFactory(tenant=tenant, name="mail6.sos-mail.com", status="warming")
    plan = plan_in_state("warming", domain=domain, address="45.123.10.6", phase="week_2")
    for offset in range(1, 4):
        DailyStatFactory(ip=plan.ip, date=TODAY - dt.timedelta(offset), sent=190, bounced=2, opens=40)
    user = UserFactory(username="operator")
    tenant.members.add(user)
    return user


def json_schema(node, components: dict):
    """An OpenAPI 3.0 schema object as plain JSON Schema: references inlined, `nullable` spelled out."""
    if isinstance(node, list):
        return [json_schema(item, components) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        return json_schema(components[node["$ref"].rsplit("/", 1)[-1]], components)
    converted = {
        key: (
            {name: json_schema(sub, components) for name, sub in value.items()}
            if key == "properties"
            else json_schema(value, components)
        )
        for key, value in node.items()
        if key not in ("nullable", "readOnly", "writeOnly", "example", "examples")
    }
    if node.get("nullable"):
        return {"anyOf": [converted, {"type": "null"}]}
    return converted


def api_schema() -> dict:
    response = APIClient().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    return response.json()


def test_the_schema_is_a_valid_openapi_3_document(db):
    schema = api_schema()

    validate_schema(schema)  # raises on an invalid document
    assert schema["openapi"].startswith("3.")
    for path in (
        "/api/v1/warmup",
        "/api/v1/ips/{address}/stats",
        "/api/v1/domains",
        "/api/v1/plans/{address}/{action}",
    ):
        assert path in schema["paths"]
    assert {"tokenAuth", "cookieAuth"} <= set(schema["components"]["securitySchemes"])


def test_schema_generation_emits_no_warning(db, tmp_path):
    # The command CI would run; --fail-on-warn turns any warning into an error.
    call_command(
        "spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yml"), stderr=StringIO()
    )

    assert "/api/v1/pmta-config" in (tmp_path / "schema.yml").read_text()


def test_the_docs_page_serves_swagger_ui_without_a_cdn(db):
    response = APIClient().get("/api/docs/")

    assert response.status_code == 200
    html = response.content.decode()
    assert "drf_spectacular_sidecar/swagger-ui-dist" in html
    assert "cdn.jsdelivr.net" not in html and "unpkg.com" not in html
    assert "/api/schema/" in html


def test_each_endpoint_answers_as_documented(demo, redis_client):
    schema = api_schema()
    components = schema["components"]["schemas"]
    client = APIClient()
    client.force_authenticate(demo)
    walked = set()

    for path, operations in schema["paths"].items():
        if not path.startswith("/api/v1/") or path.startswith("/api/v1/webhooks/"):
            continue  # the webhooks have their own authentication and tests
        for method, operation in operations.items():
            if method not in ("get", "post"):
                continue
            name = operation["operationId"]
            spec = REQUESTS[name]
            url = path.format(**PATH_VALUES) + spec.get("query", "")
            if method == "get":
                response = client.get(url)
            else:
                response = client.post(url, spec.get("body", {}), format="json")

            status = str(response.status_code)
            assert response.status_code == EXPECTED_STATUS.get(name, 200), (name, response.content[:300])
            assert status in operation["responses"], f"{name}: {status} is not documented"
            documented = operation["responses"][status]["content"]
            media_type = response["Content-Type"].split(";")[0]
            assert media_type in documented, f"{name}: {media_type} is not documented"
            if media_type == "application/json":
                jsonschema.validate(response.json(), json_schema(documented[media_type]["schema"], components))
            else:
                assert documented[media_type]["schema"]["type"] == "string"
                assert response.content.decode().startswith(("# PowerMTA configuration", "# KumoMTA traffic shaping"))
            walked.add(name)

    assert walked == set(REQUESTS)


def test_documented_errors_are_what_the_endpoints_return(demo):
    schema = api_schema()
    client = APIClient()
    client.force_authenticate(demo)

    cases = [
        ("/api/v1/warmup", "get", "?tenant=nope", None, 404),
        ("/api/v1/ips/{address}/stats", "get", "?from=never", None, 400),
        ("/api/v1/ips/{address}/stats", "post", "", {"sent": -5}, 400),
        ("/api/v1/domains", "post", "", {"tenant": "sos-expat"}, 400),
        ("/api/v1/plans/{address}/{action}", "post", "", {}, 200),
        ("/api/v1/plans/{address}/{action}", "post", "", {}, 409),  # already paused
        ("/api/v1/forecast", "get", "?days=0", None, 400),
        ("/api/v1/pmta-config", "get", "?tenant=nope", None, 404),
        ("/api/v1/kumomta-config", "get", "?tenant=nope", None, 404),
    ]
    for path, method, query, body, expected in cases:
        url = path.format(**PATH_VALUES) + query
        response = client.get(url) if method == "get" else client.post(url, body, format="json")
        assert response.status_code == expected, (url, response.content[:200])
        assert str(expected) in schema["paths"][path][method]["responses"], (path, expected)
        assert isinstance(response.json(), dict)
