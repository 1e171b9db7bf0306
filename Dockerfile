# The portal's image: gunicorn (web), the Celery worker and Celery beat all run from it
# (docker-compose.yml picks the command). Configuration comes from the environment (.env).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, so that a code change does not reinstall them.
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .

# Static files are collected at build time (whitenoise serves them). Settings refuse to load with
# DEBUG off and no SECRET_KEY, so this step gets a throwaway key that the image does not keep.
RUN SECRET_KEY=collectstatic-only DEBUG=false ALLOWED_HOSTS=localhost \
    python manage.py collectstatic --no-input --verbosity 0

# An unprivileged user; the metrics folder is shared by the web workers and the Celery worker
# (PROMETHEUS_MULTIPROC_DIR) and must be theirs to write.
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin warmup \
    && mkdir -p /var/lib/warmup-metrics /app/var \
    && chown -R warmup:warmup /var/lib/warmup-metrics /app/var
USER warmup

EXPOSE 8000
CMD ["gunicorn", "warmup_portal.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "2", "--access-logfile", "-"]
