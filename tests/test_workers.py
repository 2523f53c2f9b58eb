"""run_workers: a plain supervisor that backs off when workers cannot start."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

from tests.conftest import ROOT, worker_env


def test_workers_that_cannot_reach_redis_are_restarted_with_growing_delays(db):
    env = worker_env(REDIS_URL="redis://127.0.0.1:1/0")  # nothing listens there
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "django", "run_workers", "--workers", "1"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    time.sleep(12)
    supervisor.send_signal(signal.SIGTERM)
    output, _ = supervisor.communicate(timeout=60)
    delays = [float(d) for d in re.findall(r"restarting in ([\d.]+) s", output)]
    assert len(delays) >= 2
    assert delays == sorted(delays) and delays[-1] > delays[0]  # backing off, not a tight loop
    assert len(delays) <= 5  # 16 restarts in 8 s was the old behaviour
