"""The batch engine: fan a job out over RQ workers with a global concurrency limit.

PostgreSQL is the source of truth: every item is a JobItem row that moves from `pending`
to `running` (claimed under a lease) to exactly one final state. Redis carries only what
can be rebuilt: the RQ queue, the job's concurrency slots, live latency figures.

How a job runs, and where each part lives:
1. `planning.launch` creates the job and its items, or enqueues the kind's planner, which
   adds items page by page while they already run, on its own worker too (planning.py).
2. Runners (`project.jobs.run_chunk`, any worker on any machine) claim items with
   `FOR UPDATE SKIP LOCKED` under a lease (store.py) and run them in threads (runner.py),
   each attempt holding one of the job's C slots (slots.py), with retries, backoff and a
   deadline per item (execute.py). A heartbeat thread renews the leases (heartbeat.py).
3. Results are written in batches; the job's counters change in the same transaction,
   counting only items the runner still held, so every item counts once; the last one
   finishes the job exactly once (finalize.py).
4. If a worker dies, its slots return once its `alive` key lapses, and its items once
   their leases lapse; `recovery.sweep`, run by every runner and every idle worker
   (worker.py), re-enqueues work nobody holds and restarts dead planners (recovery.py).
5. The job page reads in-flight counts, latency and failure groups from counters (live.py).

The public API, used by the views, the admin and the commands:
"""

from __future__ import annotations

from project.engine.finalize import finalize
from project.engine.live import LiveFigures, failure_groups, live_figures
from project.engine.planning import (
    add_items,
    cancel,
    finish_planning,
    get_queue,
    launch,
    retry_failed,
)
from project.engine.recovery import sweep
from project.engine.runner import run_chunk
from project.engine.slots import fair_share
from project.engine.store import bound_cursor

__all__ = [
    "LiveFigures",
    "add_items",
    "bound_cursor",
    "cancel",
    "failure_groups",
    "fair_share",
    "finalize",
    "finish_planning",
    "get_queue",
    "launch",
    "live_figures",
    "retry_failed",
    "run_chunk",
    "sweep",
]
