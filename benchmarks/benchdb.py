"""Each benchmark runs in a PostgreSQL database of its own, prepared before Django starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def prepare_database(server: str, name: str, fresh: bool) -> None:
    """Create database `name` on `server` (with `fresh`, drop and re-create it); migrate it.

    The caller has pointed DATABASE_URL at it, so `migrate` (a subprocess) works on it.
    """
    import psycopg

    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if exists and fresh:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        if fresh or not exists:
            conn.execute(f'CREATE DATABASE "{name}"')
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, check=True)
