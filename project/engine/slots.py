"""A job's C concurrency slots: interchangeable tokens in Redis lists, shared by every worker.

Free tokens sit in one list; a runner moves the tokens it holds into a list of its own
(LMOVE, atomic), so the number of tokens, and so of items in flight, never exceeds C. Each
runner keeps a local pool of tokens its threads share without asking Redis, and rebalances
a few times a second towards a max-min fair share (`fair_share`); its `alive` key carries
its demand and lapses a few seconds after it dies, and then any runner that is short of
slots returns the dead runner's tokens (`reclaim_dead`).

Every change is one Lua script, so it is atomic. A layout has an epoch: when Redis restarts
(or the keys are lost any other way) the first runner to notice lays out new tokens under a
new epoch, and every runner's tokens of the old epoch are void. Items that were running
then still occupy slots: the new layout holds back a reserve of as many tokens as the job
has items under a live lease, and gives one out as each of those items finishes. Once
their leases have lapsed, it keeps back only as many as the live runners say they still
run (`phantoms`, in each runner's `alive` value), so a finish nobody could report (Redis
was away, or the runner had not yet seen the new layout) delays a token, never loses it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
import uuid

import redis
from django.conf import settings

from project.connections import get_redis, get_script

log = logging.getLogger(__name__)

# Keys live while the job runs: every refresh extends them; finalize deletes them.
KEY_TTL = 24 * 3600

# KEYS: epoch, free, reserve, reserve_until, owners.
# ARGV: new epoch, limit, reserved, seconds to hold the reserve, ttl, key prefix.
# Returns the epoch. Tokens of an old layout that survived (its keys expired one by one)
# are dropped with the lists that hold them, so they are never counted twice.
LAYOUT = """
local current = redis.call('GET', KEYS[1])
if current then return current end
for _, owner in ipairs(redis.call('SMEMBERS', KEYS[5])) do
  redis.call('DEL', ARGV[6] .. ':held:' .. owner)
end
redis.call('DEL', KEYS[5])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local limit = tonumber(ARGV[2])
local reserved = math.min(tonumber(ARGV[3]), limit)
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[5])
redis.call('DEL', KEYS[2])
for i = 1, limit - reserved do redis.call('RPUSH', KEYS[2], i) end
if limit > reserved then redis.call('EXPIRE', KEYS[2], ARGV[5]) end
redis.call('SET', KEYS[3], reserved, 'EX', ARGV[5])
redis.call('SET', KEYS[4], tostring(now + tonumber(ARGV[4])), 'EX', ARGV[5])
return ARGV[1]
"""

# KEYS: epoch, free, owners, held, alive, reserve, reserve_until.
# ARGV: my epoch, owner, alive value ("demand,in use,phantoms"), alive ttl, key ttl, prefix.
# Returns {0, tokens held, other runners' alive values...}, or {-1} when there is no layout,
# or {-2} when the layout is not this runner's epoch (its tokens are void).
REFRESH = """
local current = redis.call('GET', KEYS[1])
if not current then return {-1} end
if current ~= ARGV[1] then return {-2} end
local ttl = ARGV[5]
for _, k in ipairs({KEYS[1], KEYS[2], KEYS[3], KEYS[6], KEYS[7]}) do
  redis.call('EXPIRE', k, ttl)
end
redis.call('SADD', KEYS[3], ARGV[2])
redis.call('SET', KEYS[5], ARGV[3], 'EX', ARGV[4])
redis.call('EXPIRE', KEYS[4], ttl)
local out = {0, redis.call('LLEN', KEYS[4])}
local phantoms = 0
for _, owner in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  local v = redis.call('GET', ARGV[6] .. ':alive:' .. owner)
  if v then
    phantoms = phantoms + (tonumber(string.match(v, ',(%d+)$')) or 0)
    if owner ~= ARGV[2] then table.insert(out, v) end
  end
end
local reserve = tonumber(redis.call('GET', KEYS[6]) or '0')
if reserve > phantoms then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  if now >= tonumber(redis.call('GET', KEYS[7]) or '0') then
    -- The old holders' leases have lapsed: keep back only what live runners still run.
    for i = 1, reserve - phantoms do redis.call('RPUSH', KEYS[2], 'r') end
    redis.call('SET', KEYS[6], phantoms, 'KEEPTTL')
  end
end
return out
"""

# KEYS: epoch, from, to, owners, alive.  ARGV: my epoch, count, owner, alive ttl.
# Moves up to count tokens; -1 if void. The owner is registered, and said alive, in the same
# step: a runner that dies right after taking tokens is found by reclaim_dead, and one that
# lives is never mistaken for dead.
MOVE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
redis.call('SADD', KEYS[4], ARGV[3])
redis.call('SET', KEYS[5], '0,0,0', 'NX', 'EX', ARGV[4])
local moved = 0
for i = 1, tonumber(ARGV[2]) do
  if not redis.call('LMOVE', KEYS[2], KEYS[3], 'LEFT', 'RIGHT') then break end
  moved = moved + 1
end
return moved
"""

# KEYS: epoch, reserve, free.  ARGV: my epoch.  An item of a lost layout finished: its
# slot of the reserve becomes a free token.
END_PHANTOM = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if tonumber(redis.call('GET', KEYS[2]) or '0') > 0 then
  redis.call('DECR', KEYS[2])
  redis.call('RPUSH', KEYS[3], 'p')
  return 1
end
return 0
"""

# KEYS: owners, free.  ARGV: key prefix.  Returns the tokens of runners whose alive key
# lapsed to the free list; returns how many.
RECLAIM = """
local returned = 0
for _, owner in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. ':alive:' .. owner) == 0 then
    local held = ARGV[1] .. ':held:' .. owner
    while redis.call('LMOVE', held, KEYS[2], 'LEFT', 'RIGHT') do returned = returned + 1 end
    redis.call('SREM', KEYS[1], owner)
  end
end
return returned
"""

# KEYS: epoch, held, free, owners, alive.  ARGV: my epoch, owner.  A runner leaves.
CLOSE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  while redis.call('LMOVE', KEYS[2], KEYS[3], 'LEFT', 'RIGHT') do end
end
redis.call('DEL', KEYS[2], KEYS[5])
redis.call('SREM', KEYS[4], ARGV[2])
return 1
"""


def fair_share(limit: int, demand: int, others: list[int]) -> int:
    """This runner's max-min fair share of `limit` slots, given every runner's demand.

    Runners that need less than an equal split keep what they need, and the rest is split
    among the others; so a runner finishing its work frees its slots for the rest at once.
    """
    remaining, demands = limit, sorted([*others, demand])
    for i, want in enumerate(demands):
        share = math.ceil(remaining / (len(demands) - i))
        if want == demand:
            return max(1, min(demand, share)) if demand else 0
        remaining -= min(want, share)
    return 0


class EpochChanged(Exception):
    """The slots were laid out anew (Redis restarted): this runner's tokens are void."""


class Slots:
    """The Redis side of a job's slots, as one runner (`owner`) sees them."""

    def __init__(self, job_id: int, limit: int, owner: str):
        self.prefix = f"batch:{job_id}:slots"
        self.limit = limit
        self.owner = owner
        self.epoch = ""
        p = self.prefix
        self.epoch_key = f"{p}:epoch"
        self.free_key = f"{p}:free"
        self.owners_key = f"{p}:owners"
        self.held_key = f"{p}:held:{owner}"
        self.alive_key = f"{p}:alive:{owner}"
        self.reserve_keys = [f"{p}:reserve", f"{p}:reserve_until"]

    def current_epoch(self) -> str | None:
        value = get_redis().get(self.epoch_key)
        return value.decode() if value else None

    def lay_out(self, epoch: str, reserved: int, hold_seconds: float) -> str:
        """Lay out the tokens unless someone already has; adopt and return the epoch."""
        keys = [self.epoch_key, self.free_key, *self.reserve_keys, self.owners_key]
        args = [epoch, self.limit, reserved, hold_seconds, KEY_TTL, self.prefix]
        self.epoch = get_script(LAYOUT)(keys=keys, args=args).decode()
        return self.epoch

    def adopt(self, epoch: str) -> None:
        self.epoch = epoch

    def refresh(self, demand: int, in_use: int, phantoms: int) -> tuple[int, list[int]] | None:
        """Say this runner is alive with its demand, the tokens it uses and the items it still
        runs on a lost layout's; return (tokens held, others' demands).

        Returns None when there is no layout; raises EpochChanged when this runner's tokens
        belong to an old layout.
        """
        keys = [
            self.epoch_key,
            self.free_key,
            self.owners_key,
            self.held_key,
            self.alive_key,
            *self.reserve_keys,
        ]
        args = [
            self.epoch,
            self.owner,
            f"{demand},{in_use},{phantoms}",
            alive_seconds(),
            KEY_TTL,
            self.prefix,
        ]
        reply = get_script(REFRESH)(keys=keys, args=args)
        if reply[0] == -1:
            return None
        if reply[0] == -2:
            raise EpochChanged
        others = [int(v.split(b",")[0]) for v in reply[2:]]
        return int(reply[1]), others

    def touch_alive(self) -> None:
        """Extend this runner's `alive` key (the heartbeat thread, between refreshes)."""
        get_redis().expire(self.alive_key, alive_seconds())

    def take(self, count: int) -> int:
        """Move up to `count` free tokens to this runner; return how many it got."""
        return self._move(self.free_key, self.held_key, count)

    def give_back(self, count: int) -> int:
        return self._move(self.held_key, self.free_key, count)

    def _move(self, source: str, target: str, count: int) -> int:
        keys = [self.epoch_key, source, target, self.owners_key, self.alive_key]
        args = [self.epoch, count, self.owner, alive_seconds()]
        moved = get_script(MOVE)(keys=keys, args=args)
        if moved < 0:
            raise EpochChanged
        return moved

    def end_phantom(self) -> None:
        keys = [self.epoch_key, self.reserve_keys[0], self.free_key]
        get_script(END_PHANTOM)(keys=keys, args=[self.epoch])

    def reclaim_dead(self) -> int:
        """Return the tokens of runners whose `alive` key has lapsed; return how many."""
        keys = [self.owners_key, self.free_key]
        return int(get_script(RECLAIM)(keys=keys, args=[self.prefix]))

    def close(self) -> None:
        keys = [self.epoch_key, self.held_key, self.free_key, self.owners_key, self.alive_key]
        get_script(CLOSE)(keys=keys, args=[self.epoch, self.owner])

    def runners(self) -> list[tuple[int, ...]]:
        """(demand, in use, phantoms) of each live runner, as each last said."""
        conn = get_redis()
        owners = conn.smembers(self.owners_key)
        if not owners:
            return []
        values = conn.mget([f"{self.prefix}:alive:{o.decode()}" for o in owners])
        return [tuple(map(int, v.split(b","))) for v in values if v is not None]

    def in_flight(self) -> int:
        return sum(in_use + sum(phantoms) for _, in_use, *phantoms in self.runners())

    def has_live_runner(self) -> bool:
        return bool(self.runners())

    def delete(self) -> None:
        conn = get_redis()
        keys = list(conn.scan_iter(f"{self.prefix}:*", count=1000))
        if keys:
            conn.delete(*keys)


def alive_seconds() -> int:
    """How long a runner's `alive` key outlives its last refresh: a dead runner's slots come
    back this long after it died."""
    return max(1, math.ceil(settings.BATCH_ALIVE_SECONDS))


class SlotPool:
    """One runner's local pool of the job's slots, shared by its threads.

    `held` tokens were taken from Redis, `in_use` of them by threads right now. `phantoms`
    counts items still running on tokens of a layout that was lost (a Redis restart); each
    one that finishes gives its place in the new layout's reserve back. Threads call
    `acquire` and `release`; the runner's main loop calls `balance` many times a second.
    """

    def __init__(self, slots: Slots, limit: int, stopping, count_held_elsewhere):
        self.slots = slots
        self.limit = limit
        self.stopping = stopping
        # Items other runners hold under a live lease (a database count), for a re-layout.
        self.count_held_elsewhere = count_held_elsewhere
        self.lock = threading.Condition()
        self.held = self.in_use = self.waiting = self.phantoms = 0
        # This runner's fair share, from the last balance: threads start no more than this
        # at once, so the tokens above it go back to Redis as items finish, for the runners
        # that joined later (else a busy runner re-uses every token it holds).
        self.target = limit
        self.others: list[int] = []
        self.next_reclaim = 0.0
        self.joining = 0  # runners expected to join soon (see `expect`), until join_until
        self.join_until = 0.0

    def expect(self, runners: int, seconds: float) -> None:
        """Share the slots with `runners` - 1 more runners for up to `seconds`, as if they had
        joined already, until they do (a new job's runners start a few milliseconds apart).

        Otherwise the first runner would take every slot, start every item of the first
        wave in its own process and so on one core, and give slots to the others only as
        those items end.
        """
        self.joining = max(0, runners - 1)
        self.join_until = time.monotonic() + seconds
        self.target = fair_share(self.limit, self.limit, self.other_demands())

    def other_demands(self) -> list[int]:
        """The other runners' demands, as each last said, and while the join window lasts a
        full demand for each runner expected that has not said one yet."""
        missing = self.joining - len(self.others)
        if missing > 0 and time.monotonic() < self.join_until:
            return [*self.others, *[self.limit] * missing]
        return self.others

    def acquire(self, unit) -> bool:
        """Wait for a slot for `unit`; False if the runner stops meanwhile."""
        with self.lock:
            self.waiting += 1
            try:
                while self.in_use >= min(self.held, self.target):
                    if self.stopping.is_set():
                        return False
                    self.lock.wait(0.1)
                if self.stopping.is_set():
                    return False
                self.in_use += 1
                unit.holds_slot = True
                return True
            finally:
                self.waiting -= 1

    def release(self, unit) -> None:
        """Give back the slot `unit` holds, if it still holds one (a timeout may have)."""
        with self.lock:
            if not unit.holds_slot:
                return
            unit.holds_slot = False
            phantom = self.phantoms > 0
            if phantom:
                self.phantoms -= 1
            else:
                self.in_use -= 1
            self.lock.notify()
        if phantom:
            # If Redis is away, the reserve is released when the old leases lapse.
            with contextlib.suppress(redis.RedisError):
                self.slots.end_phantom()

    def demand(self, queued_units: int) -> int:
        with self.lock:
            return self.in_use + self.phantoms + self.waiting + queued_units

    def balance(self, demand: int, refresh: bool) -> None:
        """Move tokens between Redis and the local pool towards min(fair share, demand).

        With `refresh`, also say this runner is alive, learn the others' demands, and notice
        a lost layout. A runner that cannot get its share gives back the tokens of runners
        that died, at most once a second.
        """
        try:
            if not self.slots.epoch:
                # A new runner takes up the job's layout, then says its demand and takes its
                # share in this same balance (its first items wait for nothing else).
                self.lost_layout()
                refresh = True
            if refresh:
                self.refresh(demand)
            target = fair_share(self.limit, demand, self.other_demands())
            with self.lock:
                self.target = target
            if self.held < target:
                got = self.slots.take(target - self.held)
                if got:
                    with self.lock:
                        self.held += got
                        self.lock.notify(got)
                elif time.monotonic() >= self.next_reclaim:
                    self.next_reclaim = time.monotonic() + 1
                    self.slots.reclaim_dead()
            elif self.held > target:
                with self.lock:
                    spare = max(0, self.held - max(target, self.in_use))
                    self.held -= spare
                if spare:
                    self.slots.give_back(spare)
        except EpochChanged:
            self.lost_layout()
        except redis.RedisError as exc:
            log.warning("job slots unavailable in Redis (%s)", exc)

    def refresh(self, demand: int) -> None:
        state = self.slots.refresh(demand, self.in_use, self.phantoms)
        if state is None:
            self.lost_layout()
            state = self.slots.refresh(demand, self.in_use, self.phantoms)
            if state is None:
                return
        held, self.others = state
        with self.lock:
            self.held = min(self.held, held)

    def lost_layout(self) -> None:
        """The tokens this runner held are gone: what runs now is phantoms of the new layout.

        The new epoch is known before the items running become phantoms, so each phantom
        that ends gives its reserved slot back under the epoch that reserved it.
        """
        epoch = self.slots.current_epoch()
        if not epoch:
            # Items under a live lease may be running: hold back their slots until they end.
            reserved = self.count_held_elsewhere() + self.in_use + self.phantoms
            epoch = self.slots.lay_out(uuid.uuid4().hex, reserved, settings.BATCH_LEASE_SECONDS)
        with self.lock:
            self.slots.adopt(epoch)
            self.phantoms += self.in_use
            self.in_use = self.held = 0
