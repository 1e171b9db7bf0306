"""Operator alerts: recorded in the database, delivered to Telegram after the transaction commits.

INTERFACE (the engine calls this; delivery is implemented by the operator-surface work):

    def raise_alert(kind: Alert.Kind, *, tenant, message: str, ip=None, figures=None, when=None) -> Alert
"""

from django.utils import timezone

from .models import Alert


def raise_alert(kind, *, tenant, message: str, ip=None, figures=None, when=None) -> Alert:
    """Record an alert. (Delivery to Telegram is added by the alerts work.)"""
    return Alert.objects.create(
        kind=kind, tenant=tenant, ip=ip, message=message, figures=figures or {}, created_at=when or timezone.now()
    )
