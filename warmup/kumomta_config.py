"""KumoMTA configuration for today's quotas: a traffic-shaping file for KumoMTA's shaping helper
(`policy-extras/shaping.lua`), the KumoMTA counterpart of warmup.mta_config (README "Loading the MTA configurations").

Owns the file's layout only; which IPs appear, their caps and suspensions come from
`warmup.mta_config.sending_ips()` / `provider_caps()`, so that both MTAs are told the same thing.

The helper reads TOML sections named after a destination domain, with per-egress-source overrides
`["gmail.com".sources."<source>"]` whose keys are `kumo.make_egress_path` parameters; source settings
win over domain settings, which win over `["default"]`. For each provider domain
(settings.WARMUP_PROVIDER_DOMAINS) the file writes `mx_rollup = false`, because the helper refuses
two domains that roll up to the same MX (gmail.com and googlemail.com do) unless rollup is off, and
per capped source `max_message_rate = "N/h"` with N = ceil(provider quota / 24). The egress source is
the IP's MTA source name, else the vmta name PowerMTA gets (`vmta-` and the address): name the
KumoMTA egress sources that way.
"""

from datetime import datetime

from domains.models import Tenant

from .mta_config import SENDING_STATUSES, cap_comment, prepare, stamp_hash

# KumoMTA cannot be told "0 an hour" in a shaping file: a throttle spec whose limit is 0 is refused
# when the configuration loads ("limit must be greater than 0!", ThrottleSpec and LimitSpec in
# KumoCorp/kumomta crates/throttle/src/lib.rs), which would reject the whole file, and the egress
# path's `suspended = true` "no longer has any effect" (docs: kumo.make_egress_path / suspended; it was
# subsumed by real-time suspensions, `kcli suspend-ready-q` / POST /api/admin/suspend-ready-q/v1, which
# are runtime calls, not configuration). So a suspended pair is held at the smallest rate KumoMTA
# accepts, one message a day, on both the path's message rate and the source's selection rate: with
# the selection throttle used up, KumoMTA's pool selection passes over the source for that domain and
# uses the pool's other sources (docs: kumo.make_egress_path / source_selection_rate, the IP-warmup
# use it describes) instead of queueing the domain's mail behind the held one. The comment above the section states the
# provider's quota as 0, as PowerMTA's `max-msg-rate 0` does.
HELD_RATE = "1/d"


def _toml_key(text: str) -> str:
    """A quoted TOML key; domain and source names hold no quote or backslash, but a source name is free text."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def generate_kumomta_config(tenant: Tenant, *, now: datetime | None = None) -> str:
    """The tenant's KumoMTA shaping file, to be listed after KumoMTA's own files in `extra_files`.

    Only sources that have a cap today appear: warming IPs for every provider, active IPs for their
    suspended providers. In dry run nothing is generated (DryRunActive), as for PowerMTA.
    """
    ips, capped, header = prepare(tenant, now, "KumoMTA traffic shaping")
    lines = [
        *header,
        "# Load it last in shaping's extra_files. Per egress source and mailbox provider domain:",
        '# max_message_rate = "ceil(provider quota / 24)/h"; a suspended provider is held at '
        f'"{HELD_RATE}" (KumoMTA refuses a rate of 0).',
        "",
    ]

    # {domain: {source name: (rate, comment)}}: the file is written domain by domain.
    sections: dict[str, dict[str, tuple[str, str]]] = {}
    for ip in ips:
        entry = capped[ip.pk]
        if ip.status not in SENDING_STATUSES:
            continue  # paused or pending: in no pool, nothing to shape
        for cap in entry.caps:
            rate = f"{cap.hourly_rate}/h" if cap.hourly_rate else HELD_RATE
            comment = cap_comment(cap, entry.daily_quota, tenant.zone)
            if not cap.hourly_rate and cap.suspended_until is None:
                comment += " (0 messages)"
            for domain in cap.domains:
                sections.setdefault(domain, {})[ip.mta_name] = (rate, f"{ip.address} {comment}")

    if not sections:
        lines.append("# No source has a cap today: no warming IP and no suspended provider.")
    for domain in sorted(sections):
        lines += [f"[{_toml_key(domain)}]", "mx_rollup = false", ""]
        for source, (rate, comment) in sorted(sections[domain].items()):
            lines += [f"[{_toml_key(domain)}.sources.{_toml_key(source)}]", f"# {comment}"]
            lines.append(f'max_message_rate = "{rate}"')
            if rate == HELD_RATE:
                lines.append(f'source_selection_rate = "{HELD_RATE}"')
            lines.append("")
    return stamp_hash("\n".join(lines).rstrip("\n") + "\n")
