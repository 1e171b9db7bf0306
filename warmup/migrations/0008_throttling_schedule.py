"""Creates the periodic task that suspends throttled IP-provider pairs and lifts ended suspensions, every 5 minutes."""

from django.db import migrations

from warmup_portal.beat import add_periodic_task, remove_periodic_task

NAME = "check-provider-throttling"


def create_periodic_task(apps, schema_editor):
    add_periodic_task(
        apps,
        name=NAME,
        task="warmup.check_provider_throttling",
        minute="*/5",
        hour="*",
        description="Suspends a provider for an IP whose throttling deferrals of the last hour pass "
        "WARMUP_THROTTLE_DEFERRALS and WARMUP_THROTTLE_SHARE, and lifts every provider suspension whose time is up.",
    )


def delete_periodic_task(apps, schema_editor):
    remove_periodic_task(apps, NAME)


class Migration(migrations.Migration):
    dependencies = [
        ("warmup", "0007_provider_shares_and_suspensions"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(create_periodic_task, delete_periodic_task)]
