"""`webhook_token --tenant T [--rotate] [--label L]`: issue a tenant's webhook token and print it once.

`--mta-source NAME` instead of `--tenant` issues a token of an installation-level MTA source (admin: MTA
sources), which credits the IPs of the tenants the source lists.
"""

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from domains.models import MTASource, Tenant, WebhookToken
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
        owner = parser.add_mutually_exclusive_group(required=True)
        owner.add_argument("--tenant", help="Tenant slug or id.")
        owner.add_argument(
            "--mta-source", help="Name of an MTA source (admin: MTA sources) posting for several tenants."
        )
        parser.add_argument("--rotate", action="store_true", help="Revoke every other token of the same owner.")
        parser.add_argument("--label", default="", help="Which sender will use it, e.g. 'pmta-1'.")

    def handle(self, *args, tenant: str | None, mta_source: str | None, rotate: bool, label: str, **options):
        if tenant is not None:
            owner = find_tenant(tenant)
            _, token = WebhookToken.issue(owner, label=label[:100], rotate=rotate)
            name = owner.slug
        else:
            source = MTASource.objects.filter(name=mta_source).first()
            if source is None:
                raise CommandError(
                    f"--mta-source: no MTA source named {mta_source!r} (add it in the admin, MTA sources)."
                )
            _, token = WebhookToken.issue(mta_source=source, label=label[:100], rotate=rotate)
            name = source.name
        self.stdout.write(token)
        if options["verbosity"] > 1:
            note = "other tokens revoked" if rotate else "other tokens still valid"
            self.stderr.write(self.style.SUCCESS(f"New webhook token for {name} ({note})."))
