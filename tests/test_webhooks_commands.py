"""Commands webhook_token and ingest_acct."""

from datetime import date
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from domains.models import WebhookToken
from webhooks.auth import sender_for_token
from webhooks.management.commands.ingest_acct import ingest_file
from webhooks.models import DeadLetter

from .webhooks_support import FIXTURES, ips, nonzero, read, utc_tenant  # noqa: F401


def run(*args) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue().strip()


def test_webhook_token_prints_a_working_token_and_rotate_revokes_the_others(utc_tenant):  # noqa: F811
    first = run("webhook_token", "--tenant", "sos-expat")
    second = run("webhook_token", "--tenant", str(utc_tenant.pk), "--label", "pmta-1")
    assert first.startswith("wpt_") and first != second
    assert sender_for_token(first) == utc_tenant == sender_for_token(second)
    assert not WebhookToken.objects.filter(token_hash=first).exists()  # stored hashed only
    third = run("webhook_token", "--tenant", "sos-expat", "--rotate")
    assert sender_for_token(third) == utc_tenant
    assert WebhookToken.objects.active().count() == 1


def test_webhook_token_names_an_unknown_tenant(db):
    with pytest.raises(CommandError, match="--tenant: No tenant with slug or id 'nope'"):
        run("webhook_token", "--tenant", "nope")


def test_ingest_acct_counts_a_file_once(utc_tenant, ips, redis_client, tmp_path):  # noqa: F811
    summary = run("ingest_acct", str(FIXTURES / "powermta_acct.csv"), "--tenant", "sos-expat")
    assert "6 accepted, 0 duplicates, 0 unattributed, 0 ignored, 0 rejected" in summary
    again = run("ingest_acct", str(FIXTURES / "powermta_acct.csv"), "--tenant", "sos-expat")
    assert "0 accepted, 6 duplicates" in again
    assert nonzero(read(ips["45.123.10.2"], date(2026, 12, 24))) == {"sent": 1, "delivered": 1}


def test_ingest_acct_streams_in_batches_and_reports_rejections(utc_tenant, ips, redis_client, tmp_path):  # noqa: F811
    path = tmp_path / "acct.csv"
    with path.open("w") as out:
        out.write("type,timeLogged,rcpt,dlvSourceIp\n")
        for n in range(2500):
            out.write(f"d,{1798016412 + n},r{n}@gmail.com,45.123.10.{n % 5 + 1}\n")
        out.write("zz,1798016412,a@gmail.com,45.123.10.1\nd,1798016412,a@gmail.com,45.123.10.99\n")
    summary = ingest_file(path, utc_tenant, batch_size=1000)
    assert (summary.accepted, summary.unattributed, summary.rejected_count) == (2500, 1, 1)
    assert summary.rejected == [{"record": 2501, "error": "type: unknown record type 'zz'"}]
    assert sum(read(ip, date(2026, 12, 23))["sent"] for ip in ips.values()) == 2500
    assert DeadLetter.objects.count() == 2


def test_ingest_acct_refuses_a_missing_file_and_an_empty_one(utc_tenant, tmp_path):  # noqa: F811
    with pytest.raises(CommandError, match="does not exist"):
        run("ingest_acct", str(tmp_path / "missing.csv"), "--tenant", "sos-expat")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(CommandError, match="empty CSV"):
        run("ingest_acct", str(tmp_path / "empty.csv"), "--tenant", "sos-expat")
