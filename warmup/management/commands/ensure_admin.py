"""`ensure_admin`: make sure a superuser exists for the embedded default (`make run`)."""

import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = (
        "Create the superuser 'admin' with a generated password, printed once. If it exists already, "
        "say so and change nothing."
    )

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin", help="Superuser name (default: admin).")

    def handle(self, *args, **options):
        username = options["username"]
        user_model = get_user_model()
        if user_model.objects.filter(**{user_model.USERNAME_FIELD: username}).exists():
            self.stdout.write(f"Superuser {username!r} already exists; its password is unchanged.")
            return
        password = secrets.token_urlsafe(12)
        user_model.objects.create_superuser(username=username, email="", password=password)
        self.stdout.write(self.style.SUCCESS(f"Created superuser {username!r} with password: {password}"))
        self.stdout.write("This password is shown only once; change it in the admin.")
