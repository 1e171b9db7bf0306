"""`add_tenant --name N [--slug S] [--timezone Z]`: create a tenant (a brand with its own domains and IPs)."""

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils.text import slugify

from domains.models import Tenant


def create_tenant(name: str, slug: str = "", time_zone: str = "UTC") -> Tenant:
    """Validate and create a tenant; ValidationError names the field."""
    name = (name or "").strip()
    slug = (slug or "").strip() or slugify(name)
    tenant = Tenant(name=name, slug=slug, time_zone=(time_zone or "UTC").strip())
    errors: dict[str, list[str]] = {}
    try:
        tenant.full_clean(validate_unique=False)
    except ValidationError as exc:
        errors.update(exc.message_dict)
    if name and Tenant.objects.filter(name__iexact=name).exists():
        errors.setdefault("name", []).append(f"A tenant named {name!r} already exists.")
    if slug and Tenant.objects.filter(slug=slug).exists():
        errors.setdefault("slug", []).append(f"The slug {slug!r} is already taken (choose one with --slug).")
    if errors:
        raise ValidationError(errors)
    with transaction.atomic():
        tenant.save()
    return tenant


def describe_errors(exc: ValidationError) -> str:
    """'field: message' lines, for command output."""
    if hasattr(exc, "error_dict"):
        return "; ".join(f"{field}: {' '.join(messages)}" for field, messages in exc.message_dict.items())
    return " ".join(exc.messages)


class Command(BaseCommand):
    help = "Create a tenant (a brand). Its days run midnight to midnight in its time zone (default UTC)."

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True, help="Display name, e.g. 'SOS-Expat'.")
        parser.add_argument(
            "--slug", default="", help="Short identifier used by commands and the API (default: from the name)."
        )
        parser.add_argument("--timezone", default="UTC", help="IANA time zone, e.g. Europe/Paris (default UTC).")

    def handle(self, *args, **options):
        try:
            tenant = create_tenant(options["name"], options["slug"], options["timezone"])
        except ValidationError as exc:
            raise CommandError(describe_errors(exc)) from None
        if options["verbosity"]:
            self.stdout.write(
                self.style.SUCCESS(
                    f"Created tenant {tenant.name} (slug {tenant.slug}, zone {tenant.time_zone}, id {tenant.pk})."
                )
            )
