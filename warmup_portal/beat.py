"""Periodic tasks created by data migrations in django-celery-beat (historical models passed in).

get_or_create throughout: running a migration again never overwrites what an operator has since
changed in the admin.
"""

from django.conf import settings
from django.utils import timezone


def add_periodic_task(apps, *, name: str, task: str, minute: str, hour: str, description: str) -> None:
    """Create the periodic task `name` on a crontab in CELERY_TIMEZONE, unless it exists."""
    CrontabSchedule = apps.get_model("django_celery_beat", "CrontabSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")
    if PeriodicTask.objects.filter(name=name).exists():
        return
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


def remove_periodic_task(apps, name: str) -> None:
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name=name).delete()
