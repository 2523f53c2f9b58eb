"""The engine's RQ tasks, enqueued by dotted path (project/engine/planning.py)."""

from __future__ import annotations


def run_chunk(job_id: int, quota: int | None = None) -> None:
    """Work on a job's items until none is left (`quota` is accepted from older queues)."""
    from project.engine import runner

    runner.run_chunk(job_id)


def run_planner(job_id: int) -> None:
    """Add a planned job's items page by page (project/engine/planning.py)."""
    from project.engine import planning

    planning.run_planner(job_id)
