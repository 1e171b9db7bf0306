"""Creates the daily periodic task that prunes old dead letters."""

from django.db import migrations

from warmup_portal.beat import add_periodic_task, remove_periodic_task

NAME = "prune-dead-letters"


def create_periodic_task(apps, schema_editor):
    add_periodic_task(
        apps,
        name=NAME,
        task="webhooks.prune_dead_letters",
        minute="20",
        hour="3",
        description="Deletes dead letters older than DEAD_LETTER_RETENTION_DAYS.",
    )


def delete_periodic_task(apps, schema_editor):
    remove_periodic_task(apps, NAME)


class Migration(migrations.Migration):
    dependencies = [
        ("webhooks", "0002_messageref_moves_to_warmup"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(create_periodic_task, delete_periodic_task)]
