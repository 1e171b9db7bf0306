"""generate_kumomta_config: write a tenant's KumoMTA traffic-shaping file for today's quotas (README: loading it)."""

from warmup.kumomta_config import generate_kumomta_config
from warmup.management.commands.generate_pmta_config import ConfigCommand


class Command(ConfigCommand):
    help = (
        "Print (or write to --output) the KumoMTA traffic-shaping file of a tenant for today's quotas: per "
        "egress source and mailbox provider domain, max_message_rate = ceil(provider quota / 24)/h, and the "
        "suspended providers held. List the file last in shaping's extra_files, then run `kcli bump-config-epoch`."
    )

    mta = "KumoMTA"

    @staticmethod
    def generate(tenant) -> str:
        return generate_kumomta_config(tenant)
