"""Creates the periodic tasks of PRODUCT.md section 6 in django-celery-beat.

get_or_create throughout: running it again, or a later migration, never overwrites what an operator has
since changed in the admin.
"""

from django.conf import settings
from django.db import migrations
from django.utils import timezone

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
        "Deletes expired de-duplication keys and message references, and old dead letters.",
    ),
]


def create_periodic_tasks(apps, schema_editor):
    CrontabSchedule = apps.get_model("django_celery_beat", "CrontabSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")
    for name, task, minute, hour, description in PERIODIC_TASKS:
        if PeriodicTask.objects.filter(name=name).exists():
            continue
        crontab, _ = CrontabSchedule.objects.get_or_create(
            minute=minute,
            hour=hour,
            day_of_week="*",
            day_of_month="*",
            month_of_year="*",
            timezone=settings.CELERY_TIMEZONE,
        )
        PeriodicTask.objects.get_or_create(
            name=name, defaults={"task": task, "crontab": crontab, "description": description}
        )
    # Historical models send no signals: tell a running beat that its schedule changed.
    PeriodicTasks.objects.update_or_create(ident=1, defaults={"last_update": timezone.now()})


def delete_periodic_tasks(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTask.objects.filter(name__in=[name for name, *_ in PERIODIC_TASKS]).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("warmup", "0001_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(create_periodic_tasks, delete_periodic_tasks)]
