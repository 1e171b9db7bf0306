"""The Celery application: configuration from Django settings (CELERY_*), tasks autodiscovered."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "warmup_portal.settings")

app = Celery("warmup_portal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
