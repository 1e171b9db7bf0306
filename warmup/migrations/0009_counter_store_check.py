"""The "Counter store unhealthy" and "healthy again" alerts, and the periodic task that raises them (every 5
minutes)."""

from django.db import migrations, models

from warmup_portal.beat import add_periodic_task, remove_periodic_task

NAME = "check-counter-store"


def create_periodic_task(apps, schema_editor):
    add_periodic_task(
        apps,
        name=NAME,
        task="warmup.check_counter_store",
        minute="*/5",
        hour="*",
        description="Alerts when the counter store is unreachable, refuses writes (full, a replica) or may evict "
        "keys (again every hour while it lasts), and when it is healthy again.",
    )


def delete_periodic_task(apps, schema_editor):
    remove_periodic_task(apps, NAME)


class Migration(migrations.Migration):
    dependencies = [
        ("warmup", "0008_throttling_schedule"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [
        migrations.AlterField(
            model_name="alert",
            name="kind",
            field=models.CharField(
                choices=[
                    ("paused", "Paused"),
                    ("resumed", "Resumed"),
                    ("rolled_back", "Rolled back"),
                    ("completed", "Completed"),
                    ("needs_attention", "Needs attention"),
                    ("rewarmed", "Re-warmed"),
                    ("consolidation_failed", "Consolidation failed"),
                    ("counter_store_unhealthy", "Counter store unhealthy"),
                    ("counter_store_recovered", "Counter store healthy again"),
                    ("unattributed_spike", "Unattributed spike"),
                    ("quota_overrun", "Quota overrun"),
                    ("provider_paused", "Provider paused"),
                    ("provider_suspended", "Provider suspended (throttling)"),
                    ("provider_resumed", "Provider resumed"),
                    ("manual", "Manual action"),
                ],
                max_length=32,
            ),
        ),
        migrations.RunPython(create_periodic_task, delete_periodic_task),
    ]
