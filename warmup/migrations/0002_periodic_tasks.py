"""Creates the periodic tasks of PRODUCT.md section 6 in django-celery-beat.

get_or_create throughout: running it again, or a later migration, never overwrites what an operator has
since changed in the admin.
"""

from django.db import migrations

from warmup_portal.beat import add_periodic_task, remove_periodic_task

# (name, task, minute, hour, description)
PERIODIC_TASKS = [
    (
        "consolidate-warmup-stats",
        "warmup.consolidate_warmup_stats",
        "30",
        "0",
        "Moves every finished day's counters into the daily stats.",
    ),
    (
        "advance-warmup-daily",
        "warmup.advance_warmup",
        "0",
        "1",
        "The engine's daily tick: judges yesterday, advances, pauses and resumes plans.",
    ),
    (
        "prune-warmup-data",
        "warmup.prune_warmup_data",
        "15",
        "3",
        "Deletes expired de-duplication keys and message references, and old consolidation ledger rows.",
    ),
]


def create_periodic_tasks(apps, schema_editor):
    for name, task, minute, hour, description in PERIODIC_TASKS:
        add_periodic_task(apps, name=name, task=task, minute=minute, hour=hour, description=description)


def delete_periodic_tasks(apps, schema_editor):
    for name, *_ in PERIODIC_TASKS:
        remove_periodic_task(apps, name)


class Migration(migrations.Migration):
    dependencies = [
        ("warmup", "0001_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(create_periodic_tasks, delete_periodic_tasks)]
