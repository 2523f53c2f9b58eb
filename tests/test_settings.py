"""Settings from the environment: the local secret, production, HTTPS, CSP, passwords, logs."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys

import pytest
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.urls import reverse

from tests.conftest import ROOT

# Prints what a deployment would notice: its key, and the headers of a page over HTTPS.
PROBE = """
import django, json
django.setup()
from django.conf import settings
from django.test import Client
response = Client().get("/login/", secure=True, headers={"host": "localhost"})
print(json.dumps({
    "secret_key": settings.SECRET_KEY,
    "hsts": response.headers.get("Strict-Transport-Security"),
    "cookies": {name: bool(c["secure"]) for name, c in response.cookies.items()},
}))
"""


def run(args: list[str], tmp_path, **env) -> subprocess.CompletedProcess:
    """A command in a new shell: no SECRET_KEY exported, the key file and .env under tmp_path."""
    clean = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "DJANGO_ENV")}
    clean.update(
        DJANGO_SETTINGS_MODULE="project.settings",
        SECRET_KEY_FILE=str(tmp_path / ".secret_key"),
        ENV_FILE=str(tmp_path / ".env"),
    )
    clean.update(env)
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=clean, capture_output=True, text=True, timeout=60
    )


def probe(tmp_path, **env) -> dict:
    result = run(["-c", PROBE], tmp_path, **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_commands_work_in_a_new_shell_with_a_private_generated_key(tmp_path):
    check = run(["manage.py", "check"], tmp_path)

    assert check.returncode == 0, check.stderr
    key_file = tmp_path / ".secret_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text().strip()
    assert len(key) >= 50
    assert probe(tmp_path)["secret_key"] == key  # the next command reads the same key


def test_a_key_file_readable_by_others_is_made_private(tmp_path):
    key_file = tmp_path / ".secret_key"
    key_file.write_text("an-old-local-key\n")
    key_file.chmod(0o644)

    assert probe(tmp_path)["secret_key"] == "an-old-local-key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_a_dot_env_file_is_read_in_development_and_the_environment_wins(tmp_path):
    (tmp_path / ".env").write_text("# local settings\nSECRET_KEY='from-the-env-file'\n")

    assert probe(tmp_path)["secret_key"] == "from-the-env-file"
    assert probe(tmp_path, SECRET_KEY="exported")["secret_key"] == "exported"
    assert not (tmp_path / ".secret_key").exists()


def test_an_sqlite_database_url_gets_the_options_for_concurrent_workers(tmp_path):
    """Workers write at once: without the write lock taken up front, a transaction that
    reads and then writes fails at once with "database is locked", whatever the timeout."""
    show = "import django; django.setup(); from django.conf import settings; "
    show += "print(settings.DATABASES['default']['OPTIONS'])"
    result = run(["-c", show], tmp_path, DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}")
    assert result.returncode == 0, result.stderr
    options = result.stdout.strip().splitlines()[-1]
    assert "'transaction_mode': 'IMMEDIATE'" in options
    assert "'timeout': 30" in options
    assert "journal_mode=WAL" in options


def test_production_refuses_to_start_without_a_secret_key(tmp_path):
    (tmp_path / ".secret_key").write_text("a-development-key\n")
    (tmp_path / ".env").write_text("SECRET_KEY=from-the-env-file\n")

    check = run(["manage.py", "check"], tmp_path, DJANGO_ENV="production")

    assert check.returncode != 0
    assert "SECRET_KEY is not set" in check.stderr
    assert probe(tmp_path, DJANGO_ENV="production", SECRET_KEY="real")["secret_key"] == "real"


def test_over_https_cookies_are_secure_and_browsers_get_hsts(tmp_path):
    plain = probe(tmp_path)
    https = probe(tmp_path, HTTPS="1")

    assert plain["hsts"] is None
    assert plain["cookies"] == {"csrftoken": False}
    assert https["hsts"] == "max-age=31536000"
    assert https["cookies"] == {"csrftoken": True}


def test_pages_send_a_content_security_policy(client, db):
    policy = client.get(reverse("login")).headers["Content-Security-Policy"]

    assert "default-src 'self'" in policy
    assert "script-src 'self'" in policy and "unsafe" not in policy.split("style-src-attr")[0]
    assert "frame-ancestors 'none'" in policy


@pytest.mark.parametrize("password", ["password", "12345678901"])
def test_weak_passwords_are_refused(operator, password):
    with pytest.raises(ValidationError):
        validate_password(password, operator)


def test_an_ordinary_403_is_logged_in_one_line_without_a_traceback(client, viewer, caplog):
    client.force_login(viewer)

    with caplog.at_level(logging.WARNING, logger="django.request"):
        response = client.post(reverse("launch", args=["sleep"]), {})

    assert response.status_code == 403
    [record] = [r for r in caplog.records if r.name == "django.request"]
    assert record.getMessage().startswith("Forbidden (Permission denied)")
    assert record.exc_info is None
