"""Settings of the Warmup Portal, read once from the environment (and an optional `.env` file).

With no environment at all the portal runs on SQLite with database counters and Celery's filesystem
broker, so that `make run` needs nothing but Python. `DATABASE_URL` and `REDIS_URL` switch it to
PostgreSQL and Redis. Production (DEBUG off) refuses to start without a SECRET_KEY and ALLOWED_HOSTS.
"""

from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

# --- Core -----------------------------------------------------------------------------------------

SECRET_KEY = env.str("SECRET_KEY", default="")
# DEBUG defaults to on only for a developer who has not set a SECRET_KEY.
DEBUG = env.bool("DEBUG", default=not SECRET_KEY)
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off.")
    SECRET_KEY = "django-insecure-development-only-key-do-not-use-in-production"

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"] if DEBUG else [])
if not DEBUG and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("ALLOWED_HOSTS must be set when DEBUG is off.")
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    # The admin with the portal's dashboard and "add domain with IP" pages (warmup_portal/admin.py).
    "warmup_portal.admin.PortalAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "axes",
    "domains",
    "warmup",
    "webhooks",
]

MIDDLEWARE = [
    # First: webhook ingestion goes straight to its view (its own authentication; see the module).
    "webhooks.middleware.WebhookFastPathMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it watches login attempts on the admin.
    "axes.middleware.AxesMiddleware",
]

AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]

ROOT_URLCONF = "warmup_portal.urls"
WSGI_APPLICATION = "warmup_portal.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("CONN_MAX_AGE", default=60))
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Web, worker and beat share one SQLite file in the embedded default: wait for locks.
    DATABASES["default"].setdefault("OPTIONS", {}).update({"timeout": 20})
    DATABASES["default"]["CONN_MAX_AGE"] = 0
# Several test runs may share one PostgreSQL server (CI, parallel sessions): let each name its own.
if env.str("TEST_DATABASE_NAME", default=""):
    DATABASES["default"]["TEST"] = {"NAME": env.str("TEST_DATABASE_NAME")}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# WhiteNoise's default is DEBUG as read per request, which the test runner turns off: it would then index
# (and warn about) a STATIC_ROOT that only `collectstatic` fills. Decided here instead: in development and
# tests files are looked up when asked for; in production they are indexed once, from STATIC_ROOT.
WHITENOISE_AUTOREFRESH = DEBUG
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

LOGIN_URL = "admin:login"

# --- Security (production) ----------------------------------------------------------------------

SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not DEBUG)
# MTAs often post over plain HTTP inside a private network; Prometheus and load balancers probe
# over HTTP too. SecurityMiddleware matches these against the path without its leading slash.
SECURE_REDIRECT_EXEMPT = [r"^api/v1/webhooks/", r"^healthz$", r"^metrics$"]
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=not DEBUG)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
# Preloading is a near-irreversible commitment for the whole domain, so it is the operator's choice;
# without it, `check --deploy` would warn (W021) on every installation.
SILENCED_SYSTEM_CHECKS = [] if SECURE_HSTS_PRELOAD else ["security.W021"]
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = env.float("AXES_COOLOFF_HOURS", default=1.0)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True

# --- API ----------------------------------------------------------------------------------------

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"]
    + (["rest_framework.renderers.BrowsableAPIRenderer"] if DEBUG else []),
    "EXCEPTION_HANDLER": "rest_framework.views.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Warmup Portal API",
    "DESCRIPTION": "Warm-up of email sending IPs and domains: monitoring, statistics, plan actions "
    "and event ingestion.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI served from the installed drf-spectacular-sidecar package, not from a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- Counters, broker, Celery --------------------------------------------------------------------

REDIS_URL = env.str("REDIS_URL", default="")
# REDIS_URL names a node of a Redis Cluster (the client discovers the others).
REDIS_CLUSTER = env.bool("REDIS_CLUSTER", default=False)
# "redis" when REDIS_URL is set, else the transactional counter table in the database.
WARMUP_COUNTER_BACKEND = env.str("WARMUP_COUNTER_BACKEND", default="redis" if REDIS_URL else "database")

CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL or "filesystem://")
CELERY_FILESYSTEM_DIR = Path(env.str("CELERY_FILESYSTEM_DIR", default=str(BASE_DIR / "var" / "broker")))
if CELERY_BROKER_URL == "filesystem://":
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(CELERY_FILESYSTEM_DIR / "out"),
        "data_folder_out": str(CELERY_FILESYSTEM_DIR / "out"),
        "processed_folder": str(CELERY_FILESYSTEM_DIR / "processed"),
        "control_folder": str(CELERY_FILESYSTEM_DIR / "control"),
        "store_processed": False,
    }
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TIMEZONE = env.str("CELERY_TIMEZONE", default=TIME_ZONE)
CELERY_ENABLE_UTC = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

# --- Warmup rules (PRODUCT.md section 5) ---------------------------------------------------------

WARMUP_DEFAULT_STEPS = [
    env.int("WARMUP_WEEK1_QUOTA", default=50),
    env.int("WARMUP_WEEK2_QUOTA", default=200),
    env.int("WARMUP_WEEK3_QUOTA", default=500),
    env.int("WARMUP_WEEK4_QUOTA", default=1500),
    env.int("WARMUP_WEEK5_QUOTA", default=5000),
    env.int("WARMUP_WEEK6_QUOTA", default=10000),
]
WARMUP_PHASE_DAYS = env.int("WARMUP_PHASE_DAYS", default=7)
WARMUP_MAX_BOUNCE_RATE = env.float("WARMUP_MAX_BOUNCE_RATE", default=5.0)
WARMUP_MAX_SPAM_RATE = env.float("WARMUP_MAX_SPAM_RATE", default=0.1)
WARMUP_MIN_SAMPLE = env.int("WARMUP_MIN_SAMPLE", default=100)
WARMUP_RATE_WINDOW_DAYS = env.int("WARMUP_RATE_WINDOW_DAYS", default=3)
WARMUP_MIN_COMPLAINTS = env.int("WARMUP_MIN_COMPLAINTS", default=2)
WARMUP_MIN_DAILY_UTILIZATION = env.float("WARMUP_MIN_DAILY_UTILIZATION", default=0.5)
WARMUP_PAUSE_HOURS = env.int("WARMUP_PAUSE_HOURS", default=48)
WARMUP_ROLLBACK_ON_PAUSE = env.bool("WARMUP_ROLLBACK_ON_PAUSE", default=True)
WARMUP_MAX_AUTO_RESUMES = env.int("WARMUP_MAX_AUTO_RESUMES", default=3)
WARMUP_MAX_NEW_IPS_PER_WEEK = env.int("WARMUP_MAX_NEW_IPS_PER_WEEK", default=1)
WARMUP_IDLE_REWARM_DAYS = env.int("WARMUP_IDLE_REWARM_DAYS", default=30)
WARMUP_DRY_RUN = env.bool("WARMUP_DRY_RUN", default=False)
# The engine's tick runs at this local hour in each tenant's zone (PRODUCT.md section 5).
WARMUP_TICK_HOUR = 1
WARMUP_QUOTA_OVERRUN_FACTOR = env.float("WARMUP_QUOTA_OVERRUN_FACTOR", default=1.10)

# Mailbox providers by recipient domain; anything else is "other".
WARMUP_PROVIDER_DOMAINS = {
    "gmail": ["gmail.com", "googlemail.com"],
    "microsoft": [
        "outlook.com",
        "outlook.fr",
        "hotmail.com",
        "hotmail.fr",
        "hotmail.co.uk",
        "live.com",
        "live.fr",
        "msn.com",
        "passport.com",
    ],
    "yahoo": ["yahoo.com", "yahoo.fr", "yahoo.co.uk", "ymail.com", "rocketmail.com", "aol.com", "aol.fr", "aim.com"],
    "apple": ["icloud.com", "me.com", "mac.com"],
}

# Each IP's daily quota is split per mailbox provider (PRODUCT.md section 5, "Providers" in the README):
# by the tenant's own shares (admin: Provider shares), else its last 7 days of sent mail, else these.
WARMUP_PROVIDER_SHARES = env.dict(
    "WARMUP_PROVIDER_SHARES", default={"gmail": "40", "microsoft": "25", "yahoo": "15", "apple": "5", "other": "15"}
)
try:
    WARMUP_PROVIDER_SHARES = {provider.strip(): float(share) for provider, share in WARMUP_PROVIDER_SHARES.items()}
except ValueError:
    raise ImproperlyConfigured(
        f"WARMUP_PROVIDER_SHARES: {env.str('WARMUP_PROVIDER_SHARES', default='')!r} is not a list of "
        "provider=weight pairs, e.g. gmail=40,microsoft=25,yahoo=15,apple=5,other=15"
    ) from None
if unknown := sorted(set(WARMUP_PROVIDER_SHARES) - {*WARMUP_PROVIDER_DOMAINS, "other"}):
    raise ImproperlyConfigured(
        f"WARMUP_PROVIDER_SHARES: unknown provider {unknown[0]!r} (expected gmail, microsoft, yahoo, apple, other)"
    )
# A provider whose bounce or complaint rate trips a threshold is paused for the IP this long ...
WARMUP_PROVIDER_PAUSE_HOURS = env.int("WARMUP_PROVIDER_PAUSE_HOURS", default=48)
# ... and the provider pause that makes this many within WARMUP_PROVIDER_ESCALATION_DAYS pauses the IP.
WARMUP_PROVIDER_PAUSES_BEFORE_IP_PAUSE = env.int("WARMUP_PROVIDER_PAUSES_BEFORE_IP_PAUSE", default=3)
WARMUP_PROVIDER_ESCALATION_DAYS = env.int("WARMUP_PROVIDER_ESCALATION_DAYS", default=14)
# Throttling (warmup/throttling.py, every 5 minutes): an IP and provider whose throttling deferrals (rate-limited
# or reputation replies, by the deferral rules) over the last hour reach WARMUP_THROTTLE_DEFERRALS and
# WARMUP_THROTTLE_SHARE percent of the pair's deferrals of that hour get the provider suspended for the IP this
# many hours.
WARMUP_THROTTLE_DEFERRALS = env.int("WARMUP_THROTTLE_DEFERRALS", default=30)
WARMUP_THROTTLE_SHARE = env.float("WARMUP_THROTTLE_SHARE", default=25.0)
WARMUP_THROTTLE_SUSPEND_HOURS = env.int("WARMUP_THROTTLE_SUSPEND_HOURS", default=4)

# --- Alerts ---------------------------------------------------------------------------------------

TELEGRAM_BOT_TOKEN = env.str("TELEGRAM_BOT_TOKEN", default="")
TELEGRAM_CHAT_ID = env.str("TELEGRAM_CHAT_ID", default="")
TELEGRAM_API_URL = env.str("TELEGRAM_API_URL", default="https://api.telegram.org")
TELEGRAM_TIMEOUT_SECONDS = env.float("TELEGRAM_TIMEOUT_SECONDS", default=5.0)
TELEGRAM_MAX_ATTEMPTS = env.int("TELEGRAM_MAX_ATTEMPTS", default=3)
# A 429's retry_after is honoured up to this many seconds, so that a flood limit cannot stall a tick.
TELEGRAM_RETRY_AFTER_MAX_SECONDS = env.float("TELEGRAM_RETRY_AFTER_MAX_SECONDS", default=30.0)
# First wait after a connection error or a 5xx, doubled on each further attempt.
TELEGRAM_RETRY_BACKOFF_SECONDS = env.float("TELEGRAM_RETRY_BACKOFF_SECONDS", default=1.0)
# Alerts are delivered by a Celery task: when Telegram cannot take one, the task retries this many times,
# first after ALERT_RETRY_BACKOFF_SECONDS, doubling each time; the sweep re-sends what is left for a day.
ALERT_DELIVERY_MAX_RETRIES = env.int("ALERT_DELIVERY_MAX_RETRIES", default=5)
ALERT_RETRY_BACKOFF_SECONDS = env.float("ALERT_RETRY_BACKOFF_SECONDS", default=60.0)
# An unattributed spike: this many events kept as dead letters for want of an IP (unknown IP or nothing
# to attribute them by) for one tenant within one window of this many minutes raises one alert.
UNATTRIBUTED_ALERT_THRESHOLD = env.int("UNATTRIBUTED_ALERT_THRESHOLD", default=100)
UNATTRIBUTED_ALERT_WINDOW_MINUTES = env.int("UNATTRIBUTED_ALERT_WINDOW_MINUTES", default=60)

# --- Webhooks, retention, metrics ------------------------------------------------------------------

WEBHOOK_MAX_BODY_BYTES = env.int("WEBHOOK_MAX_BODY_BYTES", default=10 * 1024 * 1024)
# Django's own limit applies to form bodies only; webhooks read the raw body and check their own.
DATA_UPLOAD_MAX_MEMORY_SIZE = max(WEBHOOK_MAX_BODY_BYTES, 2_621_440)
WEBHOOK_DEDUP_TTL_DAYS = env.int("WEBHOOK_DEDUP_TTL_DAYS", default=7)
WEBHOOK_MESSAGE_REF_TTL_DAYS = env.int("WEBHOOK_MESSAGE_REF_TTL_DAYS", default=30)
WEBHOOK_SIGNATURE_TOLERANCE_SECONDS = 300
WEBHOOK_RATE_LIMIT_PER_MINUTE = env.int("WEBHOOK_RATE_LIMIT_PER_MINUTE", default=6000)
DEAD_LETTER_RETENTION_DAYS = env.int("DEAD_LETTER_RETENTION_DAYS", default=90)
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}, "axes": {"level": "WARNING"}},
}
