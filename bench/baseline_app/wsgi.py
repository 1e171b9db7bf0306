"""WSGI entry point of the baseline app (gunicorn baseline_app.wsgi, with bench/ on the path)."""

import os

from django.core.wsgi import get_wsgi_application

# Forced, not defaulted: the bench environment names the portal's settings for everything else.
os.environ["DJANGO_SETTINGS_MODULE"] = "baseline_app.settings"

application = get_wsgi_application()
