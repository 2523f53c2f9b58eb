"""Named rate limiters shared by every worker through Redis.

Each limiter enforces requests per minute and weighted cost (tokens) per minute with GCRA
(generic cell rate algorithm) in one Lua script, so the check-and-take is atomic across all
processes and machines. The clock is Redis's own TIME, so workers need not agree on time.
A 429 from the service pauses the whole limiter (`pause`), not just the one request.
A caller acquires an estimated cost before a call and `settle`s the real usage after it,
so tokens per minute follow what the service counted.
"""

from __future__ import annotations

import threading
import time

from django.conf import settings

from project.connections import get_script, thread_redis

# KEYS: request TAT, cost TAT, paused-until.  ARGV: rpm, tpm, cost, and the bursts (in
# seconds of the rate) of requests and of cost.
# Returns 0 when taken, else the seconds to wait (as a string, Lua numbers lose fractions).
GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local paused = tonumber(redis.call('GET', KEYS[3]) or '0')
if paused > now then return tostring(paused - now) end
local rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local cost, burst, cost_burst = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local wait, new_req, new_tok = 0, nil, nil
if rpm > 0 then
  local interval = 60 / rpm
  local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
  new_req = tat + interval
  local allow_at = math.min(new_req - math.max(burst * rpm / 60, 1) * interval, tat)
  wait = math.max(wait, allow_at - now)
end
if tpm > 0 and cost > 0 then
  local interval = 60 / tpm
  local tat = math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), now)
  new_tok = tat + interval * cost
  -- A request costing more than the burst may still go when the limiter is idle.
  local allow_at = math.min(new_tok - math.max(cost_burst * tpm / 60, 1) * interval, tat)
  wait = math.max(wait, allow_at - now)
end
if wait > 0 then return tostring(wait) end
-- A key lives while it holds debt (a TAT in the future), and a minute more.
if new_req then redis.call('SET', KEYS[1], new_req, 'EX', math.ceil(new_req - now) + 60) end
if new_tok then redis.call('SET', KEYS[2], new_tok, 'EX', math.ceil(new_tok - now) + 60) end
return '0'
"""

# KEYS: cost TAT.  ARGV: tpm, cost difference (actual - estimated).  A call's real usage
# replaces the estimate it acquired: more debt, or a refund that never reaches below now.
SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tpm, diff = tonumber(ARGV[1]), tonumber(ARGV[2])
if tpm <= 0 or diff == 0 then return '0' end
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
tat = math.max(tat + diff * 60 / tpm, now)
redis.call('SET', KEYS[1], tat, 'EX', math.ceil(tat - now) + 60)
return tostring(tat - now)
"""

PAUSE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local until_ = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if until_ > current then
  redis.call('SET', KEYS[1], until_, 'EX', math.ceil(tonumber(ARGV[1])) + 1)
end
return tostring(math.max(until_, current) - now)
"""


class RateLimiter:
    """A named limiter: `acquire()` blocks until one request of the given cost may go."""

    def __init__(
        self,
        name: str,
        rpm: float,
        tpm: float = 0,
        burst_seconds: float = 1.0,
        cost_burst_seconds: float = 1.0,
    ):
        self.name = name
        self.rpm = rpm
        self.tpm = tpm
        self.burst_seconds = burst_seconds
        self.cost_burst_seconds = cost_burst_seconds
        prefix = f"ratelimit:{name}"
        self.keys = [f"{prefix}:req", f"{prefix}:cost", f"{prefix}:paused"]

    def __repr__(self) -> str:
        return f"<RateLimiter {self.name} rpm={self.rpm} tpm={self.tpm}>"

    def try_acquire(self, cost: float = 1) -> float:
        """Take one request of `cost` if allowed now; return 0, or the seconds to wait."""
        script = get_script(GCRA)
        args = [self.rpm, self.tpm, cost, self.burst_seconds, self.cost_burst_seconds]
        return float(script(keys=self.keys, args=args, client=thread_redis()))

    def acquire(self, cost: float = 1, timeout: float | None = None) -> None:
        """Block until the request may go; raise TimeoutError after `timeout` seconds.

        While the limiter makes callers wait, a process's waiters queue locally and one of
        them at a time asks Redis again: each retry tells every waiter the same time to
        wait, and fifty threads all retrying every 50 ms cost more CPU than their calls.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        wait = self.try_acquire(cost)
        if wait <= 0:
            return
        self.check_deadline(wait, deadline)
        turn = _turns(self.name)
        left = -1 if deadline is None else max(0.0, deadline - time.monotonic())
        if not turn.acquire(timeout=left):
            raise TimeoutError(f"rate limiter {self.name!r} busy for longer than {timeout:g} s")
        try:
            while True:
                wait = self.try_acquire(cost)
                if wait <= 0:
                    return
                self.check_deadline(wait, deadline)
                time.sleep(min(wait, 1.0))
        finally:
            turn.release()

    def check_deadline(self, wait: float, deadline: float | None) -> None:
        if deadline is not None and time.monotonic() + wait > deadline:
            raise TimeoutError(f"rate limiter {self.name!r} busy for {wait:.1f} s")

    def settle(self, estimated: float, actual: float) -> None:
        """Replace a call's estimated cost with what it really used (tokens from `usage`)."""
        script = get_script(SETTLE)
        script(keys=self.keys[1:2], args=[self.tpm, actual - estimated], client=thread_redis())

    def pause(self, seconds: float) -> float:
        """Stop every worker's requests through this limiter for `seconds` (a 429's Retry-After)."""
        script = get_script(PAUSE)
        return float(script(keys=self.keys[2:], args=[seconds]))


_turn_locks: dict[str, threading.Lock] = {}
_turn_locks_lock = threading.Lock()


def _turns(name: str) -> threading.Lock:
    """The lock a process's waiters on limiter `name` take turns with."""
    with _turn_locks_lock:
        return _turn_locks.setdefault(name, threading.Lock())


def get_limiter(name: str) -> RateLimiter:
    """The limiter configured in settings.RATE_LIMITS under `name`."""
    try:
        config = settings.RATE_LIMITS[name]
    except KeyError:
        raise KeyError(f"unknown rate limiter {name!r}; configure it in RATE_LIMITS") from None
    # Headroom: pace a little under the provider's limit, so requests that leave on time but
    # arrive bunched (threads waiting for the GIL, the network) still fit its windows.
    headroom = config.get("headroom", 1.0)
    return RateLimiter(
        name,
        rpm=config.get("rpm", 0) * headroom,
        tpm=config.get("tpm", 0) * headroom,
        burst_seconds=config.get("burst_seconds", 1.0),
    )
