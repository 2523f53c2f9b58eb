"""The bootstrap command: admin/admin only for a local DEBUG run; the demo on every checkout."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command


def bootstrap() -> str:
    out = io.StringIO()
    call_command("bootstrap", "--no-demo", stdout=out)
    return out.getvalue()


@pytest.fixture
def no_superuser_env(monkeypatch):
    for name in ("USERNAME", "PASSWORD", "EMAIL"):
        monkeypatch.delenv(f"DJANGO_SUPERUSER_{name}", raising=False)


def test_without_debug_and_without_a_password_no_admin_admin_is_created(
    transactional_db, no_superuser_env, settings
):
    settings.DEBUG = False

    output = bootstrap()

    assert not User.objects.filter(username="admin").exists()
    assert "superuser admin not created" in output
    assert "DJANGO_SUPERUSER_PASSWORD" in output


def test_without_debug_the_given_password_is_used(transactional_db, no_superuser_env, monkeypatch):
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "a long and private passphrase")

    bootstrap()

    admin = User.objects.get(username="admin")
    assert admin.is_superuser
    assert admin.check_password("a long and private passphrase")
    assert not admin.check_password("admin")


def test_a_local_debug_run_gets_admin_admin(transactional_db, no_superuser_env, settings):
    settings.DEBUG = True

    bootstrap()

    assert User.objects.get(username="admin").check_password("admin")


def test_a_second_checkout_against_a_database_with_the_demo_still_gets_the_demo_mailbox(
    transactional_db, redis_db, no_superuser_env, settings, tmp_path
):
    from project import engine

    settings.SCANNER_MAILBOX_DIR = tmp_path / "mailboxes"
    engine.launch("sleep", {"items": 1}, keys=["a"])  # the database has its demo data

    out = io.StringIO()
    call_command("bootstrap", stdout=out)

    assert "demo data: already there" in out.getvalue()
    assert (tmp_path / "mailboxes" / "demo.mbox").stat().st_size > 0
