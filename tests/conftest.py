"""The shared test world: users, a clean Redis database, and real RQ worker processes."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import Permission, User
from django.db import connection

from project.connections import get_redis
from project.management.commands.run_workers import worker_command
from tests import kinds  # noqa: F401  (fault-injecting kinds, also in the workers)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def redis_db():
    """The test Redis database, emptied before the test."""
    conn = get_redis()
    conn.flushdb()
    return conn


@pytest.fixture
def operator(db) -> User:
    """A user who may launch, cancel and retry jobs."""
    user = User.objects.create_user("olivia", "olivia@example.com", "pw-olivia")
    user.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="project", codename__in=["add_job", "change_job", "view_job"]
        )
    )
    return user


@pytest.fixture
def viewer(db) -> User:
    """A logged-in user with no permissions: may look, may not act."""
    return User.objects.create_user("victor", "victor@example.com", "pw-victor")


def worker_env(**overrides) -> dict[str, str]:
    """Environment for subprocesses that share this test's database and Redis."""
    db = connection.settings_dict
    host, port = db["HOST"] or "127.0.0.1", db["PORT"] or 5432
    env = dict(os.environ)
    env.update(
        DATABASE_URL=f"postgres://{db['USER']}@{host}:{port}/{db['NAME']}",
        REDIS_URL=settings.REDIS_URL,
        SECRET_KEY=settings.SECRET_KEY,
        BATCH_LEASE_SECONDS="3",
        BATCH_ALIVE_SECONDS="2",
        BATCH_SWEEP_SECONDS="1",
        BATCH_KIND_MODULES="tests.kinds",
        BATCH_RETRY_BASE_SECONDS="0.05",
        BATCH_RETRY_MAX_SECONDS="0.5",
        PYTHONUNBUFFERED="1",
    )
    env.update({k: str(v) for k, v in overrides.items()})
    return env


@pytest.fixture
def workers(transactional_db, redis_db):
    """Start real RQ worker processes: `workers(2)` -> list of Popen; stopped after the test."""
    started: list[subprocess.Popen] = []

    def start(count: int = 2, **env) -> list[subprocess.Popen]:
        procs = [
            subprocess.Popen(
                worker_command([settings.BATCH_QUEUE]), cwd=ROOT, env=worker_env(**env)
            )
            for _ in range(count)
        ]
        started.extend(procs)
        return procs

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
    for proc in started:
        proc.wait(timeout=10)
