"""MessageRef, formerly webhooks': the same table (and its rows), renamed to warmup_messageref."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("domains", "0001_initial"),
        ("warmup", "0005_resend_alerts_schedule"),
        ("webhooks", "0002_messageref_moves_to_warmup"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="MessageRef",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                        ("ref", models.CharField(max_length=255)),
                        ("expires_at", models.DateTimeField()),
                        ("ip", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="+", to="domains.ip")),
                        ("tenant", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="+", to="domains.tenant")),
                    ],
                    options={
                        "db_table": "webhooks_messageref",
                        "indexes": [models.Index(fields=["expires_at"], name="messageref_expires_idx")],
                        "constraints": [
                            models.UniqueConstraint(fields=("tenant", "ref"), name="messageref_unique_tenant_ref")
                        ],
                    },
                ),
            ],
        ),
        migrations.AlterModelTable(name="messageref", table=None),
    ]
