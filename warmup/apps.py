from django.apps import AppConfig


class WarmupConfig(AppConfig):
    name = "warmup"
    verbose_name = "Warmup"

    def ready(self) -> None:
        from .metrics import connect_task_signals

        # Task run counters and durations for /metrics, in the worker (and in eager mode).
        connect_task_signals()
