"""Make a fresh checkout ready to run: database, schema, superuser, static files, demo data."""

from __future__ import annotations

import os

import psycopg
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand
from django.db import connection

from project import engine
from project.models import Job

DEFAULT_SUPERUSER = ("admin", "admin", "admin@example.com")


class Command(BaseCommand):
    help = "Create the database if missing, migrate, create the superuser, load demo data."

    def add_arguments(self, parser):
        parser.add_argument("--no-demo", action="store_true", help="skip the demo data")

    def handle(self, *args, no_demo: bool, **options):
        self.create_database()
        call_command("migrate", interactive=False, verbosity=0)
        self.stdout.write("database migrated")
        call_command("collectstatic", interactive=False, verbosity=0)
        self.create_superuser()
        if not no_demo:
            self.load_demo()

    def create_database(self) -> None:
        db = settings.DATABASES["default"]
        if connection.vendor != "postgresql":
            self.stdout.write(f"database: SQLite at {db['NAME']}")
            return
        params = {
            "host": db.get("HOST") or None,
            "port": db.get("PORT") or None,
            "user": db.get("USER") or None,
            "password": db.get("PASSWORD") or None,
            "dbname": "postgres",
            "autocommit": True,
        }
        with psycopg.connect(**params) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", [db["NAME"]]
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{db["NAME"]}"')
                self.stdout.write(f"database {db['NAME']} created")
            else:
                self.stdout.write(f"database {db['NAME']} exists")

    def create_superuser(self) -> None:
        """Create the superuser; its admin/admin default only in DEBUG (`make run`)."""
        username = os.environ.get("DJANGO_SUPERUSER_USERNAME", DEFAULT_SUPERUSER[0])
        password = os.environ.get("DJANGO_SUPERUSER_PASSWORD", "")
        email = os.environ.get("DJANGO_SUPERUSER_EMAIL", DEFAULT_SUPERUSER[2])
        User = get_user_model()
        if User.objects.filter(username=username).exists():
            self.stdout.write(f"superuser {username} exists")
            return
        if not password and not settings.DEBUG:
            self.stdout.write(
                f"superuser {username} not created: DEBUG is off and DJANGO_SUPERUSER_PASSWORD "
                "is unset (set it, or run `manage.py createsuperuser`)"
            )
            return
        password = password or DEFAULT_SUPERUSER[1]
        User.objects.create_superuser(username=username, email=email, password=password)
        self.stdout.write(f"superuser {username} created")

    def load_demo(self) -> None:
        from django.apps import apps

        # Files on this machine first: a second checkout, or another machine, against a
        # database that has its demo data already still needs them (the demo mailbox).
        for app in apps.get_app_configs():
            writer = getattr(app, "write_demo_files", None)
            if writer:
                self.stdout.write(f"demo data: {writer()}")
        if Job.objects.exists():
            self.stdout.write("demo data: already there")
            return
        job = engine.launch(
            "sleep",
            {"items": 300, "latency_ms": 150, "fail_rate": 0.03, "seed": 7},
            concurrency=20,
        )
        self.stdout.write(f"demo data: sleep job #{job.pk} queued (the workers run it)")
        for app in apps.get_app_configs():
            loader = getattr(app, "load_demo", None)
            if loader:
                self.stdout.write(f"demo data: {loader()}")
