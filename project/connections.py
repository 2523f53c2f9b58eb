"""The shared Redis client used by the rate limiter and the engine's concurrency slots."""

from __future__ import annotations

import functools
import os
import threading

import redis
from django.conf import settings


@functools.cache
def get_redis() -> redis.Redis:
    # socket_timeout must exceed the longest blocking call (BLMOVE waits up to 1 s).
    return redis.Redis.from_url(
        settings.REDIS_URL,
        socket_timeout=10,
        socket_connect_timeout=5,
        health_check_interval=30,
        max_connections=None,
    )


_local = threading.local()


def thread_redis() -> redis.Redis:
    """This thread's own connection from the shared pool, for the calls an item makes several
    times (the rate limiters' scripts).

    Taking a connection from the pool for each call means the pool's lock and a poll() of
    the connection, and every blocking call lets the worker's other threads in between: a
    job's threads then all progress together and all finish late. The connection goes back
    to the pool when the thread ends. A forked work horse's main thread makes its own (the
    one it inherited shares its socket with the parent).
    """
    pid, client = getattr(_local, "client", (None, None))
    if client is None or pid != os.getpid():
        pool = get_redis().connection_pool
        client = redis.Redis(connection_pool=pool, single_connection_client=True)
        _local.client = (os.getpid(), client)
    return client


@functools.cache
def get_script(source: str):
    """A Lua script on the shared client, made once per process: making one hashes its
    source, and the limiters and slots run theirs several times per item."""
    return get_redis().register_script(source)


def open_redis_connections(count: int) -> None:
    """Open up to `count` connections in the shared client's pool, as a worker starts: each
    item thread that takes a rate limiter uses one, and a job's first items would otherwise
    all connect at once. (A forked work horse makes its own.)"""
    pool = get_redis().connection_pool
    opened = []
    try:
        for _ in range(count):
            opened.append(pool.get_connection())
    finally:
        for connection in opened:
            pool.release(connection)
