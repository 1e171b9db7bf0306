"""generate_kumomta_config: write a tenant's KumoMTA traffic-shaping file for today's quotas (README: loading it)."""

from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from warmup.kumomta_config import generate_kumomta_config
from warmup.management.commands.generate_pmta_config import write_atomically
from warmup.mta_config import DryRunActive, config_hash
from warmup.onboarding import resolve_tenant


class Command(BaseCommand):
    help = (
        "Print (or write to --output) the KumoMTA traffic-shaping file of a tenant for today's quotas: per "
        "egress source and mailbox provider domain, max_message_rate = ceil(provider quota / 24)/h, and the "
        "suspended providers held. List the file last in shaping's extra_files, then run `kcli bump-config-epoch`."
    )

    def add_arguments(self, parser):
        parser.add_argument("--tenant", required=True, metavar="T", help="Tenant slug or id.")
        parser.add_argument("--output", metavar="FILE", help="Write to FILE (atomically) instead of printing.")

    def handle(self, *args, **options):
        try:
            tenant = resolve_tenant(options["tenant"])
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        try:
            text = generate_kumomta_config(tenant)
        except DryRunActive as exc:
            raise CommandError(str(exc)) from None
        if not options["output"]:
            self.stdout.write(text, ending="")
            return
        path = Path(options["output"])
        if not path.parent.is_dir():
            raise CommandError(f"Cannot write {path}: the directory {path.parent} does not exist.")
        try:
            write_atomically(path, text)
        except OSError as exc:
            raise CommandError(f"Cannot write {path}: {exc.strerror}.") from None
        if options["verbosity"] > 0:
            written = f"KumoMTA configuration of {tenant.slug} written to {path} (content hash {config_hash(text)})."
            self.stdout.write(self.style.SUCCESS(written))
