"""Creates the periodic task that re-sends undelivered alerts, every 10 minutes."""

from django.db import migrations

from warmup_portal.beat import add_periodic_task, remove_periodic_task

NAME = "resend-undelivered-alerts"


def create_periodic_task(apps, schema_editor):
    add_periodic_task(
        apps,
        name=NAME,
        task="warmup.resend_undelivered_alerts",
        minute="*/10",
        hour="*",
        description="Queues again the alerts of the last day that Telegram has not taken yet.",
    )


def delete_periodic_task(apps, schema_editor):
    remove_periodic_task(apps, NAME)


class Migration(migrations.Migration):
    dependencies = [
        ("warmup", "0004_alert_delivery_queue"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(create_periodic_task, delete_periodic_task)]
