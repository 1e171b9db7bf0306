"""Adding a sending domain with its IP, and the rotation rule that spaces new warmups (PRODUCT.md section 4).

`add_domain_with_ip` is the one way in for the admin form, the `add_domain` command and the API: it
validates everything first, then creates the domain, the IP and its plan in one transaction, so that a
refusal leaves nothing behind. A plan whose start date is today or earlier starts at once (its start
date counts as processed by the tick); a later one waits as `scheduled`.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from domains.models import IP, Domain, Tenant, normalise_ip

from . import engine
from .models import WarmupPlan, WarmupSchedule

ROTATION_DAYS = 7

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def resolve_tenant(value) -> Tenant:
    """A tenant by slug or numeric id (a Tenant is returned as is)."""
    if isinstance(value, Tenant):
        return value
    text = str(value or "").strip()
    if not text:
        raise ValidationError({"tenant": ["A tenant is required (its slug or id)."]})
    tenant = Tenant.objects.filter(slug=text).first()
    if tenant is None and text.isdigit():
        tenant = Tenant.objects.filter(pk=int(text)).first()
    if tenant is None:
        raise ValidationError({"tenant": [f"No tenant with slug or id {text!r}."]})
    return tenant


def describe_errors(exc: ValidationError) -> str:
    """The errors as 'field: message' text, for command output."""
    if hasattr(exc, "error_dict"):
        return "; ".join(f"{field}: {' '.join(messages)}" for field, messages in exc.message_dict.items())
    return " ".join(exc.messages)


def normalise_hostname(value: str, what: str = "domain") -> str:
    """A DNS name in lower case without its trailing dot; ValueError names the problem."""
    name = (value or "").strip().lower().rstrip(".")
    if not name:
        raise ValueError(f"The {what} name is empty.")
    try:
        # Internationalised names are stored in their ASCII (punycode) form, as DNS and MTAs use them.
        ascii_name = name.encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError(f"{value!r} is not a valid {what} name.") from None
    labels = ascii_name.split(".")
    if len(ascii_name) > 253 or len(labels) < 2:
        raise ValueError(f"{value!r} is not a valid {what} name (expected something like mail1.example.com).")
    bad = [label for label in labels if not _LABEL.match(label)]
    if bad:
        raise ValueError(
            f"{value!r} is not a valid {what} name: label {bad[0]!r} must be 1-63 letters, digits or "
            "hyphens, not starting or ending with a hyphen."
        )
    if labels[-1].isdigit():
        raise ValueError(f"{value!r} is not a valid {what} name (its last label is a number; is it an IP?).")
    return ascii_name


def _starts(tenant: Tenant, around: date, exclude_pk: int | None = None) -> list[tuple[date, WarmupPlan]]:
    plans = (
        WarmupPlan.objects.live()
        .filter(ip__tenant=tenant, start_date__gte=around - timedelta(days=ROTATION_DAYS - 1))
        .select_related("ip__domain")
        .order_by("start_date", "pk")
    )
    if exclude_pk is not None:
        plans = plans.exclude(pk=exclude_pk)
    return [(plan.start_date, plan) for plan in plans]


def _conflicts(starts: list[tuple[date, WarmupPlan]], day: date, limit: int) -> list[WarmupPlan]:
    """The plans that keep `day` from being a start date: some 7-day window holding it is full."""
    for window_start in (day - timedelta(days=offset) for offset in range(ROTATION_DAYS)):
        window_end = window_start + timedelta(days=ROTATION_DAYS - 1)
        inside = [plan for start, plan in starts if window_start <= start <= window_end]
        if len(inside) >= limit:
            return inside
    return []


def earliest_start(tenant: Tenant, on_or_after: date) -> date:
    """The earliest date on or after `on_or_after` on which a new plan may start for the tenant.

    Rotation rule: at most WARMUP_MAX_NEW_IPS_PER_WEEK plans (not cancelled) start in any 7-day window.
    """
    limit = max(1, int(settings.WARMUP_MAX_NEW_IPS_PER_WEEK))
    starts = _starts(tenant, on_or_after)
    day = on_or_after
    # Each refused day lies within 7 days of an existing start, so this ends after a few steps.
    while _conflicts(starts, day, limit):
        day += timedelta(days=1)
    return day


def add_domain_with_ip(
    *,
    tenant,
    domain: str,
    ip: str,
    hostname: str = "",
    start: date | None = None,
    force: bool = False,
    mta_source_name: str = "",
    user=None,
    now: datetime | None = None,
) -> WarmupPlan:
    """Create a domain, its IP and the IP's warmup plan, all or nothing.

    Raises ValidationError with a message per field (tenant, domain, ip, hostname, mta_source_name, start).
    """
    errors: dict[str, list[str]] = {}
    try:
        tenant = resolve_tenant(tenant)
    except ValidationError as exc:
        errors.update(exc.message_dict)
        tenant = None

    try:
        domain_name = normalise_hostname(domain, "domain")
    except ValueError as exc:
        errors["domain"] = [str(exc)]
    else:
        if Domain.objects.filter(name=domain_name).exists():
            errors["domain"] = [f"The domain {domain_name} already exists."]

    try:
        address = normalise_ip(str(ip or ""))
    except ValueError as exc:
        errors["ip"] = [str(exc)]
    else:
        existing = IP.objects.filter(address=address).select_related("domain").first()
        if existing is not None:
            errors["ip"] = [f"The IP {address} already exists (domain {existing.domain.name})."]

    host = ""
    if hostname and hostname.strip():
        try:
            host = normalise_hostname(hostname, "host")
        except ValueError as exc:
            errors["hostname"] = [str(exc)]

    source_name = (mta_source_name or "").strip()
    if source_name and tenant is not None and IP.objects.filter(tenant=tenant, mta_source_name=source_name).exists():
        errors["mta_source_name"] = [f"The MTA source name {source_name!r} is already used by another IP."]

    if start is not None and not isinstance(start, date):
        errors["start"] = ["The start date must be a date (YYYY-MM-DD)."]

    if errors:
        raise ValidationError(errors)

    now = now or timezone.now()  # the simulator passes its own clock
    today = now.astimezone(tenant.zone).date()
    try:
        with transaction.atomic():
            # Serialises onboarding per tenant, so that two additions cannot both take the same free slot.
            Tenant.objects.select_for_update().filter(pk=tenant.pk).first()
            start_date = _choose_start(tenant, start, today, force)
            schedule = WarmupSchedule.default()
            domain_obj = Domain.objects.create(tenant=tenant, name=domain_name)
            ip_obj = IP.objects.create(
                tenant=tenant, domain=domain_obj, address=address, hostname=host, mta_source_name=source_name
            )
            plan = WarmupPlan.objects.create(
                ip=ip_obj,
                schedule=schedule,
                steps=list(schedule.steps),
                phase_days=schedule.phase_days,
                start_date=start_date,
                status=WarmupPlan.Status.SCHEDULED,
            )
            if start_date <= today:
                # Starts at once so that it may send on day 1; its start date counts as processed.
                changes = engine._Changes()
                engine.start_plan(plan, start_date, now, changes)
                if user is not None and getattr(user, "pk", None):
                    changes.events[-1].actor = user
                plan.last_ticked_date = start_date
                changes.flush(now)
    except IntegrityError:
        # Another request created the same domain or IP between the checks and the insert.
        raise ValidationError(
            {"domain": [f"The domain {domain_name} or the IP {address} was just created by someone else."]}
        ) from None
    return plan


def _choose_start(tenant: Tenant, start: date | None, today: date, force: bool) -> date:
    if start is None:
        return earliest_start(tenant, today)
    if force:
        return start
    limit = max(1, int(settings.WARMUP_MAX_NEW_IPS_PER_WEEK))
    conflicting = _conflicts(_starts(tenant, start), start, limit)
    if not conflicting:
        return start
    allowed = earliest_start(tenant, start)
    names = ", ".join(f"{plan.ip.domain.name} ({plan.ip.address}) starting {plan.start_date}" for plan in conflicting)
    raise ValidationError(
        {
            "start": [
                f"Starting on {start} breaks the rotation rule (at most {limit} new IP(s) per 7 days): "
                f"{names}. The earliest allowed date is {allowed}; or force it."
            ]
        }
    )
