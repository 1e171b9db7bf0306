"""Deterministic, realistic PowerMTA accounting CSV for the ingestion benches.

The header is the one of /work/shared/fixtures/powermta_acct.csv plus `repSourceIp` (feedback-loop
records name the sending IP there) and extra `header_*` columns, as a PowerMTA configured to log a
few message headers writes them. Records spread over many IPs and the main mailbox providers; types
are mostly `d`, with `b`, `t`, `f` and `rb`; diagnostics are quoted and contain commas. The same seed
gives the same bytes.

    python bench/datasets.py --records 5000 > sample.csv
"""

from __future__ import annotations

import argparse
import csv
import io
import random
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

HEADER = [
    "type",
    "timeLogged",
    "timeQueued",
    "orig",
    "rcpt",
    "orcpt",
    "dsnAction",
    "dsnStatus",
    "dsnDiag",
    "dsnMta",
    "bounceCat",
    "srcType",
    "srcMta",
    "dlvType",
    "dlvSourceIp",
    "dlvDestinationIp",
    "dlvEsmtpAvailable",
    "dlvSize",
    "vmta",
    "jobId",
    "envId",
    "repSourceIp",
    "header_Message-Id",
    "header_X-Mw-Campaign-Uid",
    "header_X-Mw-Subscriber-Uid",
    "header_Subject",
    "header_From",
    "header_List-Unsubscribe",
    "header_X-Mailer",
]

# (record type, weight): mostly deliveries, as in a healthy warmup.
TYPES = [("d", 86), ("b", 6), ("t", 5), ("f", 1), ("rb", 2)]

# (provider label, recipient domains, MX host, MX address, weight)
PROVIDERS = [
    ("gmail", ["gmail.com", "googlemail.com"], "gmail-smtp-in.l.google.com", "142.250.0.27", 36),
    (
        "outlook",
        ["outlook.com", "hotmail.com", "hotmail.fr", "live.fr"],
        "outlook-com.olc.protection.outlook.com",
        "52.101.0.1",
        24,
    ),
    ("yahoo", ["yahoo.com", "yahoo.fr", "aol.com"], "mta7.am0.yahoodns.net", "67.195.204.72", 14),
    ("icloud", ["icloud.com", "me.com"], "mx01.mail.icloud.com", "17.57.152.5", 8),
    (
        "others",
        ["orange.fr", "free.fr", "gmx.de", "web.de", "laposte.net", "example-corp.com"],
        "mx.other.example",
        "203.0.113.25",
        18,
    ),
]

DELIVERED_DIAG = [
    "smtp;250 2.0.0 OK {ts} a1si{n} - gsmtp",
    "smtp;250 2.6.0 <{mid}> [InternalId={n}, Hostname=AM0PR01MB{n}] Queued mail for delivery",
    "smtp;250 ok dirdel",
    "smtp;250 2.0.0 Ok: queued as {n:X}",
]
BOUNCES = [
    (
        "bad-mailbox",
        "5.1.1 (bad destination mailbox address)",
        "smtp;550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown, mailbox unavailable",
    ),
    ("bad-domain", "5.1.2 (bad destination system address)", "smtp;550 5.1.2 Host unknown, domain lookup failed"),
    ("inactive-mailbox", "5.2.1 (mailbox disabled)", "smtp;550 5.2.1 The email account, {rcpt}, is disabled"),
    (
        "policy-related",
        "5.7.26 (delivery not authorized)",
        "smtp;550-5.7.26 Unauthenticated email from {dom} is not accepted due to domain's DMARC policy, "
        "please contact the administrator",
    ),
    (
        "spam-related",
        "5.7.1 (delivery not authorized, message refused)",
        "smtp;554 5.7.1 Message rejected, spam content detected, see https://postmaster.example/spam",
    ),
    ("quota-issues", "5.2.2 (mailbox full)", "smtp;552 5.2.2 Mailbox full, quota exceeded, try again later"),
]
DEFERRALS = [
    ("4.2.1 (mailbox disabled)", "smtp;421 mwinf5c23 ME Trop de connexions, veuillez verifier votre configuration"),
    (
        "4.7.0 (delivery not authorized)",
        "smtp;421 4.7.0 [TSS04] Messages from {ip} temporarily deferred due to unexpected volume, see help",
    ),
    ("4.4.1 (no answer from host)", "smtp;451 4.4.1 Connection timed out, will retry"),
]
SUBJECTS = [
    "Votre facture de décembre",
    "Nouvelles offres, cette semaine",
    "Rappel: rendez-vous, demain 10h",
    "Bienvenue chez SOS-Expat",
    "Your password, reset",
]


def bench_ips(count: int = 50) -> list[str]:
    """Sending IPs from the benchmarking range 198.18.0.0/15 (RFC 2544)."""
    return [f"198.18.{i // 250}.{i % 250 + 1}" for i in range(count)]


def vmta_name(index: int) -> str:
    return f"bench-vmta-{index}"


@dataclass
class Batch:
    body: bytes
    records: int
    types: Counter = field(default_factory=Counter)

    def expected(self) -> dict[str, int]:
        """The counter totals this batch must add (PRODUCT.md section 6 counting rules)."""
        return expected_counts(self.types)


def expected_counts(types: Counter) -> dict[str, int]:
    return {
        "sent": types["d"] + types["b"],
        "delivered": types["d"],
        "bounced": types["b"] + types["rb"],
        "deferred": types["t"],
        "complaints": types["f"],
    }


def _timestamp(rng: random.Random, day: date) -> tuple[int, str, str]:
    start = datetime.combine(day, time(0, 0), tzinfo=UTC)
    logged = start + timedelta(seconds=rng.randrange(60, 86_000))
    queued = logged - timedelta(seconds=rng.randrange(1, 60))
    if rng.random() < 0.3:  # PowerMTA may log Unix seconds or its own date format
        return int(logged.timestamp()), str(int(logged.timestamp())), str(int(queued.timestamp()))
    fmt = "%Y-%m-%d %H:%M:%S+0000"
    return int(logged.timestamp()), logged.strftime(fmt), queued.strftime(fmt)


def generate_batch(records: int, *, seed: int, batch_index: int = 0, ips: list[str] | None = None, day: date) -> Batch:
    """One CSV body (header line + `records` data records); unique events across batch indexes."""
    ips = ips or bench_ips()
    rng = random.Random(seed * 1_000_003 + batch_index)
    type_names = [t for t, _ in TYPES]
    type_weights = [w for _, w in TYPES]
    provider_weights = [p[4] for p in PROVIDERS]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HEADER)
    types: Counter = Counter()
    for n in range(records):
        kind = rng.choices(type_names, type_weights)[0]
        types[kind] += 1
        _, domains, mx_host, mx_ip, _ = rng.choices(PROVIDERS, provider_weights)[0]
        ip_index = rng.randrange(len(ips))
        ip = ips[ip_index]
        sending_domain = f"mail{ip_index + 1}.bench-mail.com"
        rcpt_domain = rng.choice(domains)
        rcpt = f"user{batch_index}x{n}.{rng.randrange(10**6)}@{rcpt_domain}"
        uid = f"{seed}.{batch_index}.{n}"
        mid = f"<{uid}@{sending_domain}>"
        _, logged, queued = _timestamp(rng, day)
        campaign = f"cmp{rng.randrange(40):03d}ab{seed % 97:02d}"
        row = dict.fromkeys(HEADER, "")
        row.update(
            {
                "type": kind,
                "timeLogged": logged,
                "timeQueued": queued,
                "orig": f"bounces@{sending_domain}",
                "rcpt": rcpt,
                "dsnMta": f"{mx_host} ({mx_ip})",
                "srcType": "smtp",
                "srcMta": "app1.bench-mail.com (10.0.0.5)",
                "dlvType": "smtp",
                "dlvSourceIp": ip,
                "dlvDestinationIp": mx_ip,
                "dlvSize": str(rng.randrange(3_000, 60_000)),
                "vmta": vmta_name(ip_index),
                "jobId": f"job-{campaign}",
                "header_Message-Id": mid,
                "header_X-Mw-Campaign-Uid": campaign,
                "header_X-Mw-Subscriber-Uid": f"sub{uid}",
                "header_Subject": rng.choice(SUBJECTS),
                "header_From": f'"SOS-Expat, news" <news@{sending_domain}>',
                "header_List-Unsubscribe": f"<mailto:unsub-{uid}@{sending_domain}>, <https://{sending_domain}/u/{uid}>",
                "header_X-Mailer": "MailWizz, bench",
            }
        )
        if kind == "d":
            row.update(
                dsnAction="relayed",
                dsnStatus="2.0.0 (success)",
                dsnDiag=rng.choice(DELIVERED_DIAG).format(ts=logged, n=rng.randrange(10**8), mid=mid),
                dlvEsmtpAvailable="PIPELINING SIZE 8BITMIME",
            )
        elif kind in ("b", "rb"):
            category, status, diag = rng.choice(BOUNCES)
            row.update(
                dsnAction="failed",
                dsnStatus=status,
                dsnDiag=diag.format(rcpt=rcpt, dom=sending_domain),
                bounceCat=category,
            )
            if kind == "rb":  # an asynchronous bounce, reported after the delivery
                row.update(srcType="smtp", dlvType="", dlvDestinationIp="")
        elif kind == "t":
            status, diag = rng.choice(DEFERRALS)
            row.update(dsnAction="delayed", dsnStatus=status, dsnDiag=diag.format(ip=ip))
        elif kind == "f":  # feedback loop: the complaint names the sending IP in repSourceIp
            row.update(
                dsnAction="",
                dsnDiag="",
                dlvSourceIp="",
                dlvDestinationIp="",
                repSourceIp=ip,
                dsnMta="",
                srcType="fbl",
                dlvType="",
            )
        writer.writerow([row[h] for h in HEADER])
    return Batch(out.getvalue().encode(), records, types)


def generate_batches(count: int, *, records: int = 1000, seed: int = 7, ips: list[str] | None = None, day: date):
    return [generate_batch(records, seed=seed, batch_index=i, ips=ips, day=day) for i in range(count)]


def csv_reader_pass(bodies: list[bytes]) -> tuple[int, float]:
    """The bare baseline: decode and csv.reader every body; (data records seen, seconds)."""
    from time import perf_counter

    started = perf_counter()
    rows = 0
    for body in bodies:
        reader = csv.reader(io.StringIO(body.decode()))
        next(reader)  # the header line is not a record
        for _ in reader:
            rows += 1
    return rows, perf_counter() - started


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--ips", type=int, default=50)
    parser.add_argument("--day", type=date.fromisoformat, default=datetime.now(UTC).date())
    args = parser.parse_args(argv)
    batch = generate_batch(args.records, seed=args.seed, ips=bench_ips(args.ips), day=args.day)
    sys.stdout.write(batch.body.decode())
    print(dict(batch.types), file=sys.stderr)


if __name__ == "__main__":
    main()
