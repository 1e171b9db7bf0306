"""The deferral rule table (`DeferralRule`), seeded with the well-known Gmail, Microsoft and Yahoo replies."""

import webhooks.models
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('webhooks', '0003_prune_schedule'),
    ]

    operations = [
        migrations.CreateModel(
            name='DeferralRule',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('provider', models.CharField(blank=True, choices=[('gmail', 'Gmail'), ('microsoft', 'Microsoft'), ('yahoo', 'Yahoo'), ('apple', 'Apple'), ('other', 'Other')], help_text='The mailbox provider whose replies this rule reads; blank for any.', max_length=16)),
                ('pattern', models.CharField(help_text='A regular expression searched in the SMTP reply, case-insensitively (e.g. 4\\.7\\.28).', max_length=500, validators=[webhooks.models.validate_pattern])),
                ('classification', models.CharField(choices=[('rate_limited', 'Rate limited'), ('reputation', 'Reputation block'), ('other', 'Other')], max_length=16)),
                ('order', models.PositiveIntegerField(default=100, help_text='Rules are tried from the lowest order up.')),
                ('enabled', models.BooleanField(default=True)),
                ('note', models.TextField(blank=True, help_text='What the reply means and where the rule comes from.')),
                ('updated_at', models.DateTimeField(auto_now=True)),
            ],
            options={
                'verbose_name': 'deferral rule',
                'ordering': ['order', 'id'],
            },
        ),
    ]


# The seeded rules, with a sample reply each (the tests check that each sample gets its rule's
# classification). Operators edit the table in the admin; running this again adds nothing.
SEED = [
    {
        "order": 10,
        "provider": "gmail",
        "pattern": r"4\.7\.28",
        "classification": "rate_limited",
        "sample": "421-4.7.28 [203.0.113.42] Our system has detected an unusual rate of 421-4.7.28 unsolicited mail "
        "originating from your IP address. To protect our users from spam, mail sent from your IP address has "
        "been temporarily 421 4.7.28 rate limited. - gsmtp",
        "note": "Gmail: unusual rate of unsolicited mail from the IP, temporarily rate limited. Reply text as in "
        "https://support.google.com/mail/?p=UnsolicitedRateLimitError (the link Gmail's reply gives) and "
        "https://talk.plesk.com/threads/421-4-7-28-error-when-sending-mail-to-google-server.361840/",
    },
    {
        "order": 20,
        "provider": "gmail",
        "pattern": r"4\.7\.0.*low reputation",
        "classification": "reputation",
        "sample": "421-4.7.0 Our system has detected that this message is 421-4.7.0 suspicious due to the very low "
        "reputation of the sending IP address. To protect our users from spam, mail sent from your IP address has "
        "421-4.7.0 been temporarily rate limited. - gsmtp",
        "note": "Gmail: the sending IP's very low reputation. Reply quoted in "
        "https://discuss.vultr.com/discussion/1031/gmail-is-blocking-my-email",
    },
    {
        "order": 25,
        "provider": "gmail",
        "pattern": r"4\.7\.0.*(unusual rate|unsolicited|rate limited)",
        "classification": "rate_limited",
        "sample": "421-4.7.0 Our system has detected an unusual rate of unsolicited mail originating from your IP "
        "address. - gsmtp",
        "note": "Gmail: 4.7.0 with an unusual rate of unsolicited mail (the older form of 4.7.28). See "
        "https://era.host/en/blog/421-4-7-0-unusual-rate-error-guide.php",
    },
    {
        "order": 30,
        "provider": "gmail",
        "pattern": r"4\.2\.1.*receiving mail at a rate",
        "classification": "rate_limited",
        "sample": "450-4.2.1 The user you are trying to contact is receiving mail at a rate that 450-4.2.1 prevents "
        "additional messages from being delivered. Please resend your message at a later time. - gsmtp",
        "note": "Gmail: one recipient is receiving mail at a rate that prevents more (https://support.google.com/"
        "mail/?p=ReceivingRate; reply quoted in https://www.plesk.com/kb/support/emails-to-gmail-are-not-delivered-"
        "the-user-you-are-trying-to-contact-is-receiving-mail-at-a-rate-that-prevents-additional-messages-from-"
        "being-delivered/). It is a per-recipient limit: set it to 'other' if a few busy recipients should not "
        "count against the IP.",
    },
    {
        "order": 40,
        "provider": "microsoft",
        "pattern": r"4\.7\.65[01]|rate limited due to IP reputation",
        "classification": "reputation",
        "sample": "451 4.7.650 The mail server [203.0.113.10] has been temporarily rate limited due to IP reputation. "
        "For e-mail delivery information, see https://aka.ms/postmaster (S775)",
        "note": "Microsoft (Outlook.com, Hotmail): 451 4.7.650 / 4.7.651, temporarily rate limited due to IP "
        "reputation (S775, S3114). Replies quoted in https://forum.directadmin.com/threads/hotmail-ip-has-been-"
        "temporarily-rate-limited-due-to-ip-reputation-for-e-mail-delivery-information-see-https-aka-ms-postmaster"
        "-s775.82240/ and https://www.suped.com/knowledge/email-deliverability/sender-reputation/what-causes-"
        "temporary-rate-limiting-due-to-ip-reputation-with-microsoft-email-servers",
    },
    {
        "order": 45,
        "provider": "microsoft",
        "pattern": r"4\.7\.652|exceeded the maximum number of connections",
        "classification": "rate_limited",
        "sample": "451 4.7.652 The mail server [203.0.113.10] has exceeded the maximum number of connections. (S3115)",
        "note": "Microsoft: 451 4.7.652, too many concurrent connections from the IP (S3115). See "
        "https://www.spamresource.com/2025/07/microsoft-says-too-many-connections.html",
    },
    {
        "order": 50,
        "provider": "microsoft",
        "pattern": r"4\.7\.500|server busy|\(S3150\)|\(S775\)",
        "classification": "rate_limited",
        "sample": "451 4.7.500 Server busy. Please try again later from [203.0.113.10]. (S77714)",
        "note": "Microsoft: 451 4.7.500 Server busy, Exchange Online's throttling (S77714, S77719; S3150 and S775 "
        "without a 4.7.65x code are treated alike). See https://techcommunity.microsoft.com/t5/exchange/office365-"
        "throttling-inbound-messages-s77719/td-p/2352675 and https://www.suped.com/knowledge/email-deliverability/"
        "troubleshooting/what-causes-office365-temp-fails-and-how-can-they-be-resolved",
    },
    {
        "order": 60,
        "provider": "yahoo",
        "pattern": r"\[TSS0[45]\]|unexpected volume",
        "classification": "rate_limited",
        "sample": "421 4.7.0 [TSS04] Messages from 203.0.113.5 temporarily deferred due to unexpected volume or user "
        "complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
        "note": "Yahoo / AOL: 421 4.7.0 [TSS04] (or [TSS05]) deferred due to unexpected volume or user complaints; "
        "Yahoo asks for a retry after about four hours. See https://smtpfieldmanual.com/provider/yahoo/421/4.7.0 and "
        "https://support.cpanel.net/hc/en-us/articles/4403952239511",
    },
    {
        "order": 65,
        "provider": "yahoo",
        "pattern": r"\[(TSS09|TS0[1-3])\]|permanently deferred|deferred due to user complaints",
        "classification": "reputation",
        "sample": "421 4.7.1 [TS03] All messages from 203.0.113.5 permanently deferred; Retrying will NOT succeed.",
        "note": "Yahoo / AOL: [TS01] / [TS02] deferred due to user complaints (https://help.yahoo.com/kb/SLN3434), "
        "[TS03] all messages permanently deferred (https://help.yahoo.com/kb/SLN3436), and [TSS09] (seen in the "
        "same family; no public description found, classified with them).",
    },
]


def seed_rules(apps, schema_editor):
    DeferralRule = apps.get_model("webhooks", "DeferralRule")
    for rule in SEED:
        fields = {key: value for key, value in rule.items() if key != "sample"}
        DeferralRule.objects.get_or_create(
            provider=fields.pop("provider"), pattern=fields.pop("pattern"), defaults=fields
        )


def unseed_rules(apps, schema_editor):
    DeferralRule = apps.get_model("webhooks", "DeferralRule")
    for rule in SEED:
        DeferralRule.objects.filter(provider=rule["provider"], pattern=rule["pattern"]).delete()


Migration.operations.append(migrations.RunPython(seed_rules, unseed_rules))
