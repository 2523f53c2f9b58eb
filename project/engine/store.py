"""The engine's statements on JobItem rows: insert, claim, renew, write, release.

On PostgreSQL each is one round trip with arrays as parameters, bound on the server
(`bound_cursor`); Django's bulk helpers cost more than the work itself for fast items.
Every lease is set and compared with the database's clock (`now()`), never a worker's, so
machines need not agree on the time. Other databases (SQLite for local runs, one machine)
take the plain ORM path.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from itertools import batched

from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from project.models import JobItem

TABLE = JobItem._meta.db_table


@contextlib.contextmanager
def bound_cursor():
    """A cursor of the current connection whose parameters travel apart from the statement.

    Django's PostgreSQL cursors bind client-side: psycopg quotes every element of an array
    parameter into the SQL text, in Python, and PostgreSQL parses it back. For the engine's
    arrays of thousands of ids, timestamps and texts that was the largest single CPU cost of
    a runner (BENCHMARKS.md). Server-side binding sends them as parameters instead. Same
    connection, so same transaction; errors are Django's, as from `connection.cursor()`.
    Arrays go as `%b` (binary): psycopg's text format escapes each element with a regular
    expression, six times the CPU of the binary one.
    """
    from django.db.backends.postgresql.base import TIMESTAMPTZ_OID, ServerBindingCursor
    from django.db.backends.postgresql.psycopg_any import register_tzloader
    from psycopg.pq import Format

    connection.ensure_connection()
    with connection.wrap_database_errors:
        raw = ServerBindingCursor(connection.connection)
    # As Django's own cursors: timestamps in the connection's time zone if settings changed it.
    loader = connection.connection.adapters.get_loader(TIMESTAMPTZ_OID, Format.TEXT)
    if connection.timezone != loader.timezone:
        register_tzloader(connection.timezone, raw)
    if connection.queries_logged:
        cursor = connection.make_debug_cursor(raw)
    else:
        cursor = connection.make_cursor(raw)
    with cursor:
        yield cursor


@dataclass(frozen=True, slots=True)
class Claimed:
    """An item a runner holds: its row as claimed."""

    id: int
    key: str
    attempts: int
    claims: int
    data: object = None


# Items of dead runners first (few, and waiting longest), then pending ones in order. A
# runner never takes back an item it holds itself: its heartbeat may only be late. Items
# that were held by runners that died twice or more are suspects (one may be what kills
# its worker): they are claimed one at a time, by a runner that holds nothing else, so a
# crash counts against the item that caused it and not against its neighbours.
# The rows are picked by `id = ANY(ARRAY(SELECT ...))`: the subquery runs once, and the
# update finds its rows by primary key. As `WHERE id IN (SELECT ... LIMIT n FOR UPDATE SKIP
# LOCKED)`, a table without statistics got a nested loop that walked the whole table and
# re-ran the subquery for every row: one claim took all 1,000 items of a new job instead of
# 100, and the job's other runners found nothing left to claim.
LAPSED = "status = 'running' AND lease_until < now() AND claimed_by <> %(owner)s"
CLAIM_CONDITIONS = (f"{LAPSED} AND claims < 2", "status = 'pending'")
SUSPECT_CONDITIONS = (f"{LAPSED} AND claims >= 2",)
CLAIM_SQL = """
UPDATE {table} SET status = 'running', claimed_by = %(owner)s, claims = claims + 1,
    lease_until = now() + make_interval(secs => %(lease)s)
WHERE id = ANY(ARRAY(
    SELECT id FROM {table} WHERE job_id = %(job)s AND {condition}
    ORDER BY id LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
))
RETURNING id, key, attempts, claims, data
"""


def claim(
    job_id: int, owner: str, limit: int, lease: float, suspects: bool = False
) -> list[Claimed]:
    """Claim up to `limit` claimable items for runner `owner`; every claim is counted.

    With `suspects`, claim one item that was held by runners that died twice or more.
    """
    if connection.vendor != "postgresql":
        return _claim_orm(job_id, owner, 1 if suspects else limit, lease, suspects)
    rows = []
    conditions = SUSPECT_CONDITIONS if suspects else CLAIM_CONDITIONS
    limit = 1 if suspects else limit
    with transaction.atomic(savepoint=False), bound_cursor() as cursor:
        probe_by_index(cursor)
        for condition in conditions:
            params = {"owner": owner, "lease": lease, "job": job_id, "limit": limit - len(rows)}
            cursor.execute(CLAIM_SQL.format(table=TABLE, condition=condition), params)
            rows += cursor.fetchall()
            if len(rows) >= limit:
                break
    return [Claimed(i, k, a, c, _json(d)) for i, k, a, c, d in sorted(rows)]


def probe_by_index(cursor) -> None:
    """Plan this transaction's statements as index probes, whatever the statistics say.

    The engine's statements touch a few rows by id. On a table just filled (a new
    customer's first job) the planner's statistics are missing or stale: it hashed the
    whole items table for every claim and every write (0.1-20 s each), and sorted every
    pending item of a job to take the first few. Nested loops over the primary key and
    jobitem_pending_idx are right at any size.
    """
    cursor.execute(
        "SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off; "
        "SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off"
    )


def _claim_orm(job_id: int, owner: str, limit: int, lease: float, suspects: bool) -> list[Claimed]:
    now = timezone.now()
    lapsed = Q(status=JobItem.Status.RUNNING, lease_until__lt=now) & ~Q(claimed_by=owner)
    if suspects:
        condition = lapsed & Q(claims__gte=2)
    else:
        condition = (lapsed & Q(claims__lt=2)) | Q(status=JobItem.Status.PENDING)
    with transaction.atomic():
        rows = list(
            JobItem.objects.filter(job_id=job_id)
            .filter(condition)
            .order_by("id")
            .select_for_update(skip_locked=True)
            .values_list("id", "key", "attempts", "claims", "data")[:limit]
        )
        JobItem.objects.filter(id__in=[row[0] for row in rows]).update(
            status=JobItem.Status.RUNNING,
            claimed_by=owner,
            claims=F("claims") + 1,
            lease_until=now + timedelta(seconds=lease),
        )
    return [Claimed(i, k, a, c + 1, d) for i, k, a, c, d in rows]


def _json(value):
    # Django's psycopg set-up hands raw jsonb to JSONField as text.
    return json.loads(value) if isinstance(value, str) else value


# The items by primary key (the runner knows which it holds), whatever the statistics say:
# through `job_id AND status = 'running'` a table without them had every renewal walk all
# of the job's items. Only leases that would lapse before the renewal after next are
# extended: a fast runner's items are written long before, and rewriting thousands of rows
# every renewal cost as much as claiming them. SKIP LOCKED: rows the runner's flush is
# writing right now (it finishes them) are left alone, so the heartbeat and the flush never
# wait for each other in a deadlock. `id = ANY(ARRAY(...))` as in CLAIM_SQL: as `id IN
# (SELECT ...)` a table without statistics had the subquery re-run for each of its rows.
RENEW_SQL = """
UPDATE {table} SET lease_until = now() + make_interval(secs => %(lease)s)
WHERE id = ANY(ARRAY(
    SELECT id FROM {table}
    WHERE id = ANY(%(ids)b::bigint[]) AND status = 'running' AND claimed_by = %(owner)s
        AND lease_until < now() + make_interval(secs => %(within)s)
    FOR UPDATE SKIP LOCKED
))
"""


def renew(job_id: int, owner: str, lease: float, held: list[int], within: float) -> int:
    """Extend `owner`'s leases on items `held` that lapse within `within` s; return how many."""
    if not held:
        return 0
    if connection.vendor != "postgresql":
        return JobItem.objects.filter(
            id__in=held,
            job_id=job_id,
            status=JobItem.Status.RUNNING,
            claimed_by=owner,
            lease_until__lt=timezone.now() + timedelta(seconds=within),
        ).update(lease_until=timezone.now() + timedelta(seconds=lease))
    params = {"lease": lease, "ids": held, "owner": owner, "within": within}
    with transaction.atomic(savepoint=False), bound_cursor() as cursor:
        probe_by_index(cursor)
        cursor.execute(RENEW_SQL.format(table=TABLE), params)
        return cursor.rowcount


WRITE_SQL = """
UPDATE {table} AS item SET
    status = v.status, attempts = v.attempts, error_type = v.error_type,
    error_message = v.error_message, duration_ms = v.duration_ms, result = v.result,
    started_at = v.started_at, finished_at = v.finished_at, lease_until = NULL
FROM unnest(%b::bigint[], %b::text[], %b::int[], %b::text[], %b::text[], %b::float8[],
            %b::text[], %b::timestamptz[], %b::timestamptz[])
    AS v(id, status, attempts, error_type, error_message, duration_ms, result,
         started_at, finished_at)
WHERE item.id = v.id AND item.id = ANY(%b::bigint[])
    AND item.claimed_by = %s AND item.lease_until IS NOT NULL
RETURNING item.id
"""
# "Still held" is `claimed_by = owner AND lease_until IS NOT NULL`: every way out of
# `running` clears the lease. Not `status = 'running'`, which the planner, with statistics
# gathered while nothing ran, used to scan every running item once per result.


def write(results: list, owner: str) -> set[int]:
    """Store final states of items `owner` still holds; return their ids.

    An item whose lease lapsed and went to another runner is not written (nor counted):
    whoever holds it now records it, so every item counts once. `results` have distinct
    item ids (the runner de-duplicates them).
    """
    if not results:
        return set()
    if connection.vendor != "postgresql":
        return _write_orm(results, owner)
    results = sorted(results, key=lambda r: r.item_id)  # rows locked in one order everywhere
    columns = [
        [r.item_id for r in results],
        [r.status for r in results],
        [r.attempts for r in results],
        [r.error_type for r in results],
        [r.error_message for r in results],
        [r.duration_ms for r in results],
        [r.summary[:300] for r in results],
        [r.started_at for r in results],
        [r.finished_at for r in results],
    ]
    with transaction.atomic(savepoint=False), bound_cursor() as cursor:
        # The items by primary key (id = ANY), hashed against the results: with statistics
        # that expect no running item, a nested loop walked the whole table per flush.
        cursor.execute(
            "SET LOCAL enable_nestloop = off; SET LOCAL enable_mergejoin = off; "
            "SET LOCAL enable_seqscan = off"
        )
        cursor.execute(WRITE_SQL.format(table=TABLE), [*columns, columns[0], owner])
        return {row[0] for row in cursor.fetchall()}


def _write_orm(results: list, owner: str) -> set[int]:
    by_id = {r.item_id: r for r in results}
    mine = list(
        JobItem.objects.filter(id__in=by_id, claimed_by=owner, status=JobItem.Status.RUNNING)
        .select_for_update()
        .values_list("id", flat=True)
    )
    for item_id in mine:
        r = by_id[item_id]
        JobItem.objects.filter(id=item_id).update(
            status=r.status,
            attempts=r.attempts,
            error_type=r.error_type,
            error_message=r.error_message,
            duration_ms=r.duration_ms,
            result=r.summary[:300],
            started_at=r.started_at,
            finished_at=r.finished_at,
            lease_until=None,
        )
    return set(mine)


def release(items: dict[int, int], owner: str) -> int:
    """Give back items `owner` holds but never finished ({id: attempts so far}).

    They become pending at once, for any runner; their claim is not held against them.
    """
    if not items:
        return 0
    released = 0
    for item_id, attempts in items.items():
        released += JobItem.objects.filter(
            id=item_id, claimed_by=owner, status=JobItem.Status.RUNNING
        ).update(
            status=JobItem.Status.PENDING,
            claimed_by="",
            lease_until=None,
            attempts=attempts,
            claims=F("claims") - 1,
        )
    return released


INSERT_SQL = """
WITH added AS (
    INSERT INTO {table} (job_id, key, data, status, attempts, claims, error_type,
                         error_message, result, claimed_by)
    SELECT %s, k, d::jsonb, 'pending', 0, 0, '', '', '', ''
    FROM unnest(%b::text[], %b::text[]) AS u(k, d)
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT count(*) FROM added
"""


def prepare(items: Iterable) -> list[tuple[list[str], list[str | None]]]:
    """Items (keys, or (key, data) pairs) as `insert` takes them: batches of (keys, JSON data).

    Built before the transaction that inserts them opens, so no transaction stays open while
    Python serializes a planner's page of 10,000 items.
    """
    batches = []
    for batch in batched(items, 10_000):
        keys, data = [], []
        for item in batch:
            key, value = item if isinstance(item, tuple) else (item, None)
            keys.append(str(key))
            data.append(None if value is None else json.dumps(value))
        batches.append((keys, data))
    return batches


def insert(job_id: int, batches: list[tuple[list[str], list[str | None]]]) -> int:
    """Insert pending items (`prepare`d); return how many were new.

    Keys the job already has are ignored.
    """
    added = 0
    for keys, data in batches:
        if connection.vendor != "postgresql":
            before = JobItem.objects.filter(job_id=job_id).count()
            JobItem.objects.bulk_create(
                [
                    JobItem(job_id=job_id, key=k, data=None if d is None else json.loads(d))
                    for k, d in zip(keys, data, strict=True)
                ],
                ignore_conflicts=True,
            )
            added += JobItem.objects.filter(job_id=job_id).count() - before
            continue
        with bound_cursor() as cursor:
            cursor.execute(INSERT_SQL.format(table=TABLE), [job_id, keys, data])
            added += cursor.fetchone()[0]
    return added


def claimable(job_id: int):
    """The job's items no live runner holds (database clock)."""
    return JobItem.objects.filter(job_id=job_id).filter(
        Q(status=JobItem.Status.PENDING)
        | Q(status=JobItem.Status.RUNNING, lease_until__lt=db_now())
    )


def held_elsewhere(job_id: int, owner: str) -> int:
    """Items other runners hold under a live lease: they may be running right now."""
    return (
        JobItem.objects.filter(
            job_id=job_id, status=JobItem.Status.RUNNING, lease_until__gte=db_now()
        )
        .exclude(claimed_by=owner)
        .count()
    )


def db_now():
    """The database's clock (a worker's clock may be off)."""
    if connection.vendor != "postgresql":
        return timezone.now()
    with connection.cursor() as cursor:
        cursor.execute("SELECT now()")
        return cursor.fetchone()[0]
