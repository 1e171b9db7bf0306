from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    name = "webhooks"
    verbose_name = "Webhooks"

    def ready(self) -> None:
        # Connects the signals that clear the webhook caches, in every process (web, worker, commands).
        from webhooks import cache  # noqa: F401
