"""Attribution: which of the tenant's IPs an event belongs to (PRODUCT.md section 6).

In order: the IP the record names (an IP of another tenant is unknown here: a token credits only its
tenant's IPs), else the MTA source name (PowerMTA vmta, KumoMTA egress_source = `IP.mta_source_name`),
else a message reference (Message-Id, or MailWizz's campaign/subscriber pair) remembered from the
delivery report for WEBHOOK_MESSAGE_REF_TTL_DAYS by the counter store (`CounterStore.read_refs`, and the
`refs` written with a batch's counts).
"""

from __future__ import annotations

from domains.models import IP, Tenant, normalise_ip
from webhooks.events import NormalisedEvent


class Attributor:
    """A tenant's IPs by address and by MTA source name, loaded once (per request or per backfill)."""

    def __init__(self, tenant: Tenant):
        self.tenant = tenant
        self.by_address: dict[str, int] = {}
        self.by_name: dict[str, int] = {}
        for ip_id, address, name in IP.objects.filter(tenant=tenant).values_list("id", "address", "mta_source_name"):
            self.by_address[address] = ip_id
            if name:
                self.by_name[name] = ip_id
                self.by_name.setdefault(name.lower(), ip_id)

    def ip_for(self, event: NormalisedEvent) -> int | None:
        """The tenant's IP id for an event by the IP it names, else by its MTA source name; None when neither
        is the tenant's (the event may still name a message). ValueError when its IP is not an address."""
        if event.ip:
            ip_id = self.by_address.get(event.ip)
            return ip_id if ip_id is not None else self.ip_for_address(event.ip)
        return self.ip_for_source_name(event.source_name) if event.source_name else None

    def ip_for_address(self, text: str) -> int | None:
        """The tenant's IP id for an address as the record wrote it; None when the tenant has no such IP.

        ValueError when the text is not an IP address at all.
        """
        ip_id = self.by_address.get(text)
        if ip_id is None:
            canonical = normalise_ip(text)  # "045.123.010.001" is not an address; "2001:DB8::1" is
            ip_id = self.by_address.get(canonical)
            if ip_id is not None:
                self.by_address[text] = ip_id  # later records of the batch find it directly
        return ip_id

    def ip_for_source_name(self, name: str) -> int | None:
        return self.by_name.get(name) or self.by_name.get(name.lower())
