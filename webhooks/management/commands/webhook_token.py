"""`webhook_token --tenant T [--rotate] [--label L]`: issue a tenant's webhook token and print it once."""

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from domains.models import Tenant, WebhookToken
from warmup.onboarding import resolve_tenant


def find_tenant(value: str) -> Tenant:
    """A tenant by slug or id (warmup.onboarding.resolve_tenant); CommandError says what was not found."""
    try:
        return resolve_tenant(value)
    except ValidationError as exc:
        message = "; ".join(exc.message_dict.get("tenant", exc.messages))
        raise CommandError(f"--tenant: {message} (see the admin, or add_tenant).") from None


class Command(BaseCommand):
    help = (
        "Issue a new webhook token for a tenant and print it (it is stored hashed and shown only now). "
        "A tenant may hold several tokens, one per sender; --rotate revokes all the others."
    )

    def add_arguments(self, parser):
        parser.add_argument("--tenant", required=True, help="Tenant slug or id.")
        parser.add_argument("--rotate", action="store_true", help="Revoke every other token of the tenant.")
        parser.add_argument("--label", default="", help="Which sender will use it, e.g. 'pmta-1'.")

    def handle(self, *args, tenant: str, rotate: bool, label: str, **options):
        found = find_tenant(tenant)
        _, token = WebhookToken.issue(found, label=label[:100], rotate=rotate)
        self.stdout.write(token)
        if options["verbosity"] > 1:
            note = "other tokens revoked" if rotate else "other tokens still valid"
            self.stderr.write(self.style.SUCCESS(f"New webhook token for {found.slug} ({note})."))
