"""What the benchmarks share: a PostgreSQL database of their own, prepared before Django
starts, and a reading of the machine's CPU while they run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
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


def cpu_reading() -> tuple[float, float, float]:
    """(time, CPU seconds the machine has been busy, CPU seconds of PostgreSQL's processes)."""
    import psutil

    busy = psutil.cpu_times()
    postgres = 0.0
    for process in psutil.process_iter(["name", "cpu_times"]):
        if process.info["name"] == "postgres" and process.info["cpu_times"]:
            postgres += process.info["cpu_times"].user + process.info["cpu_times"].system
    return time.monotonic(), busy.user + busy.nice + busy.system + busy.irq + busy.softirq, postgres


def cpu_used(before: tuple[float, float, float]) -> str:
    """How busy the machine was since `before` (a cpu_reading), PostgreSQL's share included."""
    after = cpu_reading()
    elapsed, busy, postgres = (b - a for a, b in zip(before, after, strict=True))
    cores = os.cpu_count() or 1
    return (
        f"the machine was busy {busy:.1f} of {elapsed * cores:.1f} CPU-seconds "
        f"({busy / (elapsed * cores):.0%} of {cores} cores), PostgreSQL {postgres:.1f} s of them"
    )
