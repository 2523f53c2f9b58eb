"""What the benchmarks share: a PostgreSQL database of their own, prepared before Django
starts; the workers they start; and what the machine's CPU did while they ran."""

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


def live_workers() -> int:
    """RQ workers on the engine's queue (Django is set up by then)."""
    from rq import Worker

    from project import engine

    return len(Worker.all(queue=engine.get_queue()))


def start_workers(count: int, env: dict | None = None) -> subprocess.Popen:
    """`manage.py run_workers --workers count` with `env` added, once they have registered."""
    before = live_workers()
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "run_workers", "--workers", str(count)],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while live_workers() < before + count:
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit("the workers did not start")
        time.sleep(0.2)
    return proc


class CpuMeter:
    """CPU seconds the workers, the bench database's backends and this process spend.

    Wall time on a shared machine depends on what else runs; CPU time much less. Each
    process's CPU is read at most every SAMPLE_SECONDS, however often `sample` is called
    (reading all of /proc takes 2 ms of this process's CPU, which the model server in it
    would wait for); a backend that ends between two samples loses at most one interval.
    PostgreSQL's shared processes (WAL writer, checkpointer) are not counted; the machine's
    busy time, from /proc/stat, includes them and everything else.
    """

    TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    SAMPLE_SECONDS = 0.25

    def __init__(self, workers: subprocess.Popen | None, database: str):
        self.root = workers.pid if workers else None
        self.database = database
        self.seen: dict[int, tuple[str, float]] = {}
        self.start: dict[int, float] = {}
        self.next_sample = time.monotonic() + self.SAMPLE_SECONDS
        self.busy0 = self.machine_busy()
        self.own0 = time.process_time()
        for pid, (group, cpu) in self.read().items():
            self.start[pid] = cpu
            self.seen[pid] = (group, cpu)

    @staticmethod
    def machine_busy() -> float:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        idle = fields[3] + fields[4]
        return (sum(fields[:8]) - idle) / CpuMeter.TICK

    def read(self) -> dict[int, tuple[str, float]]:
        found = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            rest = stat[stat.rindex(")") + 2 :].split()
            ppid, cpu = int(rest[1]), (int(rest[11]) + int(rest[12])) / self.TICK
            if comm.startswith("postgres") and self.is_bench_backend(entry, self.database):
                found[int(entry)] = ("postgres", cpu)
            elif self.root and ppid == self.root:
                found[int(entry)] = ("workers", cpu)
        return found

    @staticmethod
    def is_bench_backend(pid: str, database: str) -> bool:
        """A PostgreSQL backend serving the bench database ("postgres: ... <db> ...")."""
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return f" {database} ".encode() in f.read()
        except OSError:
            return False

    def sample(self) -> None:
        if time.monotonic() < self.next_sample:
            return
        self.next_sample = time.monotonic() + self.SAMPLE_SECONDS
        for pid, value in self.read().items():
            self.seen[pid] = value

    def totals(self) -> dict[str, float]:
        self.next_sample = 0.0  # a last sample now
        self.sample()
        out = {"workers": 0.0, "postgres": 0.0}
        for pid, (group, cpu) in self.seen.items():
            out[group] += cpu - self.start.get(pid, 0.0)
        out["machine"] = self.machine_busy() - self.busy0
        out["bench"] = time.process_time() - self.own0
        return out

    def busy(self, wall: float) -> str:
        """How busy the machine was over `wall` seconds, PostgreSQL's share included."""
        cpu, cores = self.totals(), os.cpu_count() or 1
        return (
            f"the machine was busy {cpu['machine']:.1f} of {wall * cores:.1f} CPU-seconds "
            f"({cpu['machine'] / (wall * cores):.0%} of {cores} cores): the workers "
            f"{cpu['workers']:.1f} s, the bench database's PostgreSQL backends "
            f"{cpu['postgres']:.1f} s, this process (the model server) {cpu['bench']:.1f} s"
        )
