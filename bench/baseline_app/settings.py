"""Minimal settings: no apps, no middleware, no database; production-like (DEBUG off)."""

import os

SECRET_KEY = os.environ.get("SECRET_KEY", "bench-baseline-secret-key")
DEBUG = False
ALLOWED_HOSTS = os.environ.get("ALLOWED_HOSTS", "127.0.0.1,localhost").split(",")
ROOT_URLCONF = "baseline_app.urls"
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []
DATABASES: dict = {}
USE_TZ = True
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/14")
