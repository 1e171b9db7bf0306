"""generate_pmta_config: write a tenant's PowerMTA configuration for today's quotas (README: loading it)."""

import os
import tempfile
from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from warmup.mta_config import DryRunActive, config_hash, generate_pmta_config
from warmup.onboarding import resolve_tenant


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` in one step, so that PowerMTA never reads a half-written file."""
    directory = path.parent
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class ConfigCommand(BaseCommand):
    """A command that prints or writes one tenant's generated MTA configuration (`generate` and `mta` are set
    by each command)."""

    mta = ""

    @staticmethod
    def generate(tenant) -> str:
        raise NotImplementedError

    def add_arguments(self, parser):
        parser.add_argument("--tenant", required=True, metavar="T", help="Tenant slug or id.")
        parser.add_argument("--output", metavar="FILE", help="Write to FILE (atomically) instead of printing.")

    def handle(self, *args, **options):
        try:
            tenant = resolve_tenant(options["tenant"])
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        try:
            text = self.generate(tenant)
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
            written = f"{self.mta} configuration of {tenant.slug} written to {path} (content hash {config_hash(text)})."
            self.stdout.write(self.style.SUCCESS(written))


class Command(ConfigCommand):
    help = (
        "Print (or write to --output) the PowerMTA configuration of a tenant for today's quotas: a "
        "virtual-mta per IP, hourly caps for warming IPs, a virtual-mta-pool per domain. Include the file "
        "from PowerMTA's config and run `pmta reload`."
    )
    mta = "PowerMTA"

    @staticmethod
    def generate(tenant) -> str:
        return generate_pmta_config(tenant)
