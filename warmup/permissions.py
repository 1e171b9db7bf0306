"""Who may see and act on what through the API: a user on the tenants they belong to, a superuser on all.

Views never filter by hand: they start from these scoped querysets, so that an object of another
tenant is simply not found (404, revealing nothing about its existence).
"""

from rest_framework.exceptions import NotFound, ValidationError

from domains.models import IP, Tenant, TenantQuerySet, normalise_ip

from .models import WarmupPlan


def visible_tenants(user) -> TenantQuerySet:
    return Tenant.objects.visible_to(user)


def tenant_from_query(user, slug: str | None, *, required: bool) -> Tenant | None:
    """The tenant named by `?tenant=slug`, among the caller's.

    Without a slug: None when not `required`; when required, the caller's only tenant, a 400 naming
    `tenant` when they have several (the answer would be ambiguous), a 404 when they have none.
    """
    tenants = visible_tenants(user)
    if slug:
        tenant = tenants.filter(slug=slug).first()
        if tenant is None:
            raise NotFound(f"No tenant {slug!r} among yours.")
        return tenant
    if not required:
        return None
    first_two = list(tenants.order_by("slug")[:2])
    if not first_two:
        raise NotFound("You belong to no tenant.")
    if len(first_two) > 1:
        raise ValidationError({"tenant": ["Required: you have several tenants; give one by its slug."]})
    return first_two[0]


def _address(value: str) -> str:
    try:
        return normalise_ip(value)
    except ValueError:
        raise NotFound(f"{value!r} is not an IP address.") from None


def visible_ip(user, address: str) -> IP:
    """One of the caller's IPs by address (any spelling of an IPv6 address), else 404."""
    canonical = _address(address)
    ip = IP.objects.visible_to(user).select_related("tenant", "domain").filter(address=canonical).first()
    if ip is None:
        raise NotFound(f"No IP {canonical} among your tenants.")
    return ip


def visible_plan(user, address: str) -> WarmupPlan:
    """The plan of one of the caller's IPs, else 404."""
    canonical = _address(address)
    plan = (
        WarmupPlan.objects.visible_to(user)
        .select_related("ip", "ip__tenant", "ip__domain")
        .filter(ip__address=canonical)
        .first()
    )
    if plan is None:
        raise NotFound(f"No warmup plan for IP {canonical} among your tenants.")
    return plan
