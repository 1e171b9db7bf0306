"""MessageRef moves to warmup (the counter store owns message references): state only here; the table
is kept and renamed by warmup's migration."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("webhooks", "0001_initial")]

    operations = [
        migrations.SeparateDatabaseAndState(state_operations=[migrations.DeleteModel(name="MessageRef")]),
    ]
