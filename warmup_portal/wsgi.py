"""WSGI entry point (gunicorn warmup_portal.wsgi)."""

import gc
import os
from importlib import import_module

from django.conf import settings
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "warmup_portal.settings")

application = get_wsgi_application()

# The URLconf and what its views import (the webhooks' parsers, the API's serializers),
# loaded as the worker boots instead of by the first request it serves.
import_module(settings.ROOT_URLCONF)

# The loaded application (Django, the apps, their modules: about 100,000 objects) lives as long as the
# process. Out of the cyclic collector's sight, a full collection visits only what requests allocate:
# without this, one webhook request in a hundred waited tens of milliseconds for a full collection.
gc.freeze()
