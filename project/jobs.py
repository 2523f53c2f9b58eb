"""The engine's RQ tasks, enqueued by dotted path (project/engine/planning.py).

Each one starts and ends with fresh database connections: a worker process lives long,
and a connection the database closed meanwhile must not fail the next task.
"""

from __future__ import annotations

from django.db import close_old_connections


def run_chunk(job_id: int, quota: int | None = None) -> None:
    """Work on a job's items until none is left (`quota` is accepted from older queues)."""
    from project.engine import runner

    close_old_connections()
    try:
        runner.run_chunk(job_id)
    finally:
        close_old_connections()


def run_planner(job_id: int) -> None:
    """Add a planned job's items page by page, and run them here meanwhile
    (project/engine/planning.py)."""
    from project.engine import planning

    close_old_connections()
    try:
        planning.plan_and_run(job_id)
    finally:
        close_old_connections()
