"""The production stack: docker-compose.yml against the Compose specification and the code it runs,
.env.example against every setting, the monitoring files, the Dockerfile, and `check --deploy`."""

import importlib
import importlib.resources
import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import redis
import yaml
from django.conf import settings

from .support import OwnRedis, free_port

ROOT = Path(settings.BASE_DIR)
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
APP_SERVICES = ("migrate", "web", "worker", "beat")

# PRODUCT.md section 3, the configuration table.
SECTION_3_VARIABLES = [
    "DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "SECRET_KEY", "DEBUG", "ALLOWED_HOSTS",
    "SECURE_SSL_REDIRECT", "METRICS_TOKEN", "TIME_ZONE",
    *(f"WARMUP_WEEK{n}_QUOTA" for n in range(1, 7)),
    "WARMUP_PHASE_DAYS", "WARMUP_MAX_BOUNCE_RATE", "WARMUP_MAX_SPAM_RATE", "WARMUP_MIN_SAMPLE",
    "WARMUP_RATE_WINDOW_DAYS", "WARMUP_MIN_COMPLAINTS", "WARMUP_MIN_DAILY_UTILIZATION", "WARMUP_PAUSE_HOURS",
    "WARMUP_ROLLBACK_ON_PAUSE", "WARMUP_MAX_AUTO_RESUMES", "WARMUP_MAX_NEW_IPS_PER_WEEK", "WARMUP_IDLE_REWARM_DAYS",
    "WARMUP_DRY_RUN", "TELEGRAM_BOT_TOKEN", "TELEGRAM_CHAT_ID", "TELEGRAM_API_URL", "WEBHOOK_MAX_BODY_BYTES",
    "WEBHOOK_DEDUP_TTL_DAYS", "DEAD_LETTER_RETENTION_DAYS",
]  # fmt: skip
# Read by settings.py for the test suite only; not part of a deployment.
TEST_ONLY_VARIABLES = {"TEST_DATABASE_NAME"}


def env_example() -> dict[str, tuple[str, bool]]:
    """{NAME: (value, set)} of .env.example, where set is False for a commented-out line."""
    found = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        match = re.match(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$", line.strip())
        if match:
            found.setdefault(match[2], (match[3], match[1] is None))
    return found


def command_of(service: str) -> list[str]:
    command = SERVICES[service]["command"]
    return command if isinstance(command, list) else command.split()


def test_compose_file_is_valid_against_the_compose_specification():
    schema_text = (
        importlib.resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text()
    )
    schema = json.loads(schema_text)
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    errors = sorted(validator_class(schema).iter_errors(COMPOSE), key=lambda e: list(e.path))
    assert errors == [], [f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors]


def test_compose_runs_every_part_of_the_stack():
    assert set(SERVICES) == {"postgres", "redis", "migrate", "web", "worker", "beat", "prometheus", "grafana"}
    for service in ("prometheus", "grafana"):
        assert SERVICES[service]["profiles"] == ["monitoring"]
    for service in APP_SERVICES:
        assert SERVICES[service]["env_file"] == ".env"
        assert SERVICES[service]["build"] == "."


def test_databases_have_health_checks_and_redis_persists():
    assert "pg_isready" in " ".join(SERVICES["postgres"]["healthcheck"]["test"])
    assert SERVICES["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    redis_command = command_of("redis")
    assert redis_command[redis_command.index("--appendonly") + 1] == "yes"
    assert any(volume.endswith(":/data") for volume in SERVICES["redis"]["volumes"])
    assert "/healthz" in " ".join(SERVICES["web"]["healthcheck"]["test"])


def test_the_compose_redis_never_evicts_and_frees_expired_keys_in_the_background(client, db, settings, tmp_path):
    server = OwnRedis(tmp_path, free_port(), command=command_of("redis"))
    server.start()
    try:
        own = redis.Redis.from_url(server.url)
        assert own.config_get("appendonly") == {"appendonly": "yes"}
        assert own.config_get("lazyfree-lazy-expire") == {"lazyfree-lazy-expire": "yes"}
        own.config_set("maxmemory", "100mb")  # as a deployment that caps Redis's memory would
        settings.REDIS_URL = settings.CELERY_BROKER_URL = server.url
        settings.WARMUP_COUNTER_BACKEND = "redis"
        assert client.get("/healthz").json() == {"database": "ok", "counter_store": "ok", "broker": "ok"}
    finally:
        server.stop()


def test_app_services_wait_for_healthy_databases_and_finished_migrations():
    assert command_of("migrate")[:3] == ["python", "manage.py", "migrate"]
    assert SERVICES["migrate"]["restart"] == "no"
    assert SERVICES["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for service in ("web", "worker", "beat"):
        depends = SERVICES[service]["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy", service
        assert depends["redis"]["condition"] == "service_healthy", service
        assert depends["migrate"]["condition"] == "service_completed_successfully", service


def test_web_runs_gunicorn_with_two_workers_on_the_wsgi_application():
    command = command_of("web")
    assert command[0] == "gunicorn"
    module_name, _, attribute = command[1].partition(":")
    module = importlib.import_module(module_name)
    assert callable(getattr(module, attribute or "application"))
    assert "--workers=2" in command
    assert "--bind=0.0.0.0:8000" in command


def test_the_wsgi_module_hides_the_loaded_application_from_the_cyclic_collector():
    # Otherwise a full collection visits every object of Django and the apps: a pause of tens of
    # milliseconds in one webhook request of a hundred (bench/README.md).
    code = "import gc, warmup_portal.wsgi; print(gc.get_freeze_count())"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "warmup_portal.settings"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True)

    assert int(out.stdout.strip()) > 50_000


def test_the_wsgi_module_loads_the_views_before_the_first_request():
    # A worker's first webhook would otherwise wait for the URLconf and the parsers.
    wanted = "{'webhooks.views', 'webhooks.parsers.powermta'}"
    code = f"import sys, warmup_portal.wsgi; print(sorted({wanted} & set(sys.modules)))"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "warmup_portal.settings"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True)

    assert out.stdout.strip() == "['webhooks.parsers.powermta', 'webhooks.views']"


def test_worker_and_beat_run_the_celery_app_with_the_database_scheduler():
    for service, subcommand in (("worker", "worker"), ("beat", "beat")):
        command = command_of(service)
        assert command[:4] == ["celery", "-A", "warmup_portal", subcommand]
        app = importlib.import_module(command[2]).celery_app
        assert app.main == "warmup_portal"
    scheduler = next(arg.split("=", 1)[1] for arg in command_of("beat") if arg.startswith("--scheduler="))
    module_name, _, class_name = scheduler.partition(":")
    assert getattr(importlib.import_module(module_name), class_name).__name__ == "DatabaseScheduler"
    assert scheduler == settings.CELERY_BEAT_SCHEDULER


def test_every_compose_variable_is_documented_in_env_example():
    text = (ROOT / "docker-compose.yml").read_text()
    # "$$" escapes a dollar for the container's shell; only single-dollar references are Compose's.
    used = set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    assert {"POSTGRES_PASSWORD", "ALLOWED_HOSTS", "GRAFANA_ADMIN_PASSWORD"} <= used
    assert sorted(used - set(env_example())) == []
    environment = SERVICES["web"]["environment"]
    assert sorted(set(environment) - set(env_example())) == []


def test_env_example_documents_every_setting():
    documented = set(env_example())
    assert sorted(set(SECTION_3_VARIABLES) - documented) == []
    read_by_settings = set(
        re.findall(r'env(?:\.[a-z]+)?\(\s*"([A-Z][A-Z0-9_]*)"', (ROOT / "warmup_portal" / "settings.py").read_text())
    )
    missing = sorted(read_by_settings - documented - TEST_ONLY_VARIABLES)
    assert missing == [], f"add these settings to .env.example with a comment: {missing}"
    lines = (ROOT / ".env.example").read_text().splitlines()
    setting_line = re.compile(r"^[A-Z][A-Z0-9_]*=")
    for index, line in enumerate(lines):
        if setting_line.match(line):
            # Each variable sits under a comment, or in a run of variables that one comment explains.
            above = index - 1
            while above >= 0 and setting_line.match(lines[above]):
                above -= 1
            assert above >= 0 and lines[above].startswith("#"), f".env.example line {index + 1} has no comment"


def test_prometheus_scrapes_the_portal_with_the_bearer_token():
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["web:8000"]
    assert job["authorization"]["type"] == "Bearer"
    token_file = job["authorization"]["credentials_file"]
    assert token_file in " ".join(command_of("prometheus"))
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in SERVICES["prometheus"]["volumes"]


def test_grafana_is_provisioned_with_a_dashboard_over_the_portal_series():
    datasources = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    (datasource,) = datasources["datasources"]
    assert datasource["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/warmup.yml").read_text())
    dashboards_path = providers["providers"][0]["options"]["path"]
    assert f"./deploy/grafana/dashboards:{dashboards_path}:ro" in SERVICES["grafana"]["volumes"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in SERVICES["grafana"]["volumes"]

    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/warmup-portal.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert all(panel["datasource"]["uid"] == datasource["uid"] for panel in dashboard["panels"])
    series = {re.sub(r"_(total|bucket|count|sum)$", "", name) for expr in expressions
              for name in re.findall(r"\b(warmup_[a-z_]+)", expr)}  # fmt: skip
    expected = {
        "warmup_ip_daily_quota", "warmup_ip_sent_today", "warmup_ip_status", "warmup_ip_bounce_rate",
        "warmup_ip_complaint_rate", "warmup_webhook_events", "warmup_task_runs", "warmup_task_duration_seconds",
        "warmup_counter_store_up", "warmup_counter_store_healthy",
    }  # fmt: skip
    assert series == expected
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_dockerfile_builds_a_non_root_gunicorn_image():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.M)
    assert "pip install -r requirements.txt" in dockerfile
    assert "manage.py collectstatic --no-input" in dockerfile
    users = re.findall(r"^USER (\S+)$", dockerfile, re.M)
    assert users and users[-1] not in ("root", "0")
    assert '"gunicorn", "warmup_portal.wsgi:application"' in dockerfile
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".env", ".git"} <= set(ignored)


def run_manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {key: os.environ[key] for key in ("PATH", "HOME", "LANG") if key in os.environ}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def production_env() -> dict[str, str]:
    """The example production environment (.env.example's set lines) with a real key and the test database."""
    database_url = os.environ.get("DATABASE_URL", "")
    if not database_url.startswith("postgres"):
        pytest.fail("DATABASE_URL must name the test PostgreSQL (make test sets it)")
    env = {name: value for name, (value, is_set) in env_example().items() if is_set}
    env.update(SECRET_KEY=secrets.token_urlsafe(50), DATABASE_URL=database_url)
    assert env["DEBUG"] == "false" and env["ALLOWED_HOSTS"]
    return env


def test_check_deploy_is_clean_with_the_example_production_environment(production_env):
    result = run_manage("check", "--deploy", "--fail-level", "WARNING", env=production_env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout + result.stderr


def test_debug_off_without_a_secret_key_refuses_to_start(production_env):
    result = run_manage("check", env={**production_env, "SECRET_KEY": ""})
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "SECRET_KEY must be set" in result.stderr


def test_the_example_provider_shares_are_read_and_a_bad_value_is_named(production_env):
    code = "from django.conf import settings; print(sorted(settings.WARMUP_PROVIDER_SHARES.items()))"
    result = run_manage("shell", "-c", code, env=production_env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(
        [("apple", 5.0), ("gmail", 40.0), ("microsoft", 25.0), ("other", 15.0), ("yahoo", 15.0)]
    )
    for value, complaint in (("gmail=forty", "is not a list of provider=weight pairs"), ("hotmail=3", "'hotmail'")):
        result = run_manage("check", env={**production_env, "WARMUP_PROVIDER_SHARES": value})
        assert result.returncode != 0
        assert "WARMUP_PROVIDER_SHARES: " in result.stderr and complaint in result.stderr
