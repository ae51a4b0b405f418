"""Limits shared by several nodes through Redis: a GCRA rate limiter and connection leases.

Both run as Lua scripts on the Redis server, each loaded once (SCRIPT LOAD) and run
with EVALSHA, loaded again if the server answers NOSCRIPT (after a restart or SCRIPT
FLUSH). Every script reads the server's clock (``TIME``), so nodes whose clocks
disagree still share one timeline.

Rates: one key per (limit, scope) holds the theoretical arrival time (TAT) in
microseconds. An event conforms when ``now >= TAT - τ`` (τ = (B - 1)·T) and moves TAT
to ``max(TAT, now) + T``, T = P/N rounded up to a whole microsecond. The cap is the
local GCRA's (trimta/core/throttle.py): **in every window of P, at most ⌈N⌉ + B - 1
events conform**, whichever nodes ask. Proof: after events a .. a+m-1 conformed, TAT
≥ t_a + m·T, so event a+m conforms only if t_(a+m) ≥ t_a + (m - B + 1)·T; for m =
⌈N⌉ + B - 1 that is t_a + ⌈N⌉·T ≥ t_a + P. Unlike the local limiter, it forgives no
lateness (one more round trip per event would be needed to keep a log), so a backlog
whose waiters wake late runs a little under the rate, never over it.

Connection leases: a sorted set per scope, member = lease id, score = expiry (server
µs). Acquiring drops expired leases first and adds one only while fewer than N are
left; extending moves an unexpired lease's expiry on; releasing removes it. A node
that dies stops extending, so its leases lapse after one lease period.

Every call is bounded by `timeout_s`; no connection, a timeout and an error reply
are all translated here, once, into `ClusterUnavailable`.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import coredis
import coredis.exceptions
import trio

from trimta.adapters.cluster_config import ClusterConfig, display_url
from trimta.core.units import Rate

GCRA_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or 0)
if tat < now then tat = now end
local now_s = string.format('%.0f', now)
if now < tat - tau then return {string.format('%.0f', tat - tau - now), now_s} end
local new = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.ceil((new - now) / 1000) + 1)
return {'0', now_s}
"""

LEASE_ACQUIRE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit = tonumber(ARGV[2])
local period = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now))
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) and redis.call('ZCARD', KEYS[1]) >= limit then
  return 0
end
redis.call('ZADD', KEYS[1], string.format('%.0f', now + period), ARGV[1])
redis.call('PEXPIRE', KEYS[1], math.ceil(period / 1000) + 1)
return 1
"""

LEASE_EXTEND_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local period = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now))
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], 'XX', string.format('%.0f', now + period), ARGV[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < math.ceil(period / 1000) + 1 then redis.call('PEXPIRE', KEYS[1], math.ceil(period / 1000) + 1) end
return 1
"""

LEASE_RELEASE_SCRIPT = """
return redis.call('ZREM', KEYS[1], ARGV[1])
"""

LEASE_COUNT_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
return redis.call('ZCOUNT', KEYS[1], string.format('(%.0f', now), '+inf')
"""

# Node liveness: one sorted set of node ids scored by when each was last seen plus its TTL.
# A node adds itself (moving its expiry on), drops the expired, and learns how many are alive.
HEARTBEAT_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now))
redis.call('ZADD', KEYS[1], string.format('%.0f', now + ttl), ARGV[1])
redis.call('PEXPIRE', KEYS[1], math.ceil(ttl / 1000) + 1)
return redis.call('ZCARD', KEYS[1])
"""

_SCRIPTS = {
    "heartbeat": HEARTBEAT_SCRIPT,
    "gcra": GCRA_SCRIPT,
    "acquire": LEASE_ACQUIRE_SCRIPT,
    "extend": LEASE_EXTEND_SCRIPT,
    "release": LEASE_RELEASE_SCRIPT,
    "count": LEASE_COUNT_SCRIPT,
}


class ClusterUnavailable(Exception):
    """Redis did not answer within the timeout, refused the connection, or replied with an error."""


@dataclass(frozen=True, slots=True)
class SharedRate:
    """A rate as the Lua GCRA takes it: the interval T and tolerance τ in whole microseconds."""

    interval_us: int
    tolerance_us: int

    @classmethod
    def from_rate(cls, rate: Rate) -> SharedRate:
        burst = max(1, rate.max_burst or 1)
        # T rounded up: ⌈N⌉·T ≥ P still holds, so the cap does.
        interval = math.ceil(rate.period_s * 1_000_000 / rate.limit)
        return cls(interval_us=interval, tolerance_us=interval * (burst - 1))


@dataclass(frozen=True, slots=True)
class RateAnswer:
    """One GCRA call: the wait (0: the event conformed and was taken) and the server's time then."""

    wait_s: float
    server_time_us: int


class RedisLimits:
    """Shared rates and connection leases on one Redis; use inside `session()`."""

    def __init__(self, url: str, *, timeout_s: float = 1.0, pool_size: int = 8, prefix: str = "trimta:") -> None:
        self._rates: dict[Rate, SharedRate] = {}
        self.url = url
        self.timeout_s = timeout_s
        self.pool_size = pool_size
        self.prefix = prefix
        self._client: coredis.Redis | None = None
        self._shas: dict[str, str] = {}

    @classmethod
    def from_config(cls, config: ClusterConfig) -> RedisLimits:
        return cls(config.redis_url, timeout_s=config.timeout_s, pool_size=config.pool_size)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[RedisLimits]:
        client = coredis.Redis.from_url(
            self.url, stream_timeout=self.timeout_s, connect_timeout=self.timeout_s,
            max_connections=self.pool_size, verify_version=False,
        )
        try:
            async with client:
                self._client = client
                yield self
        finally:
            self._client = None
            self._shas.clear()

    async def try_acquire(self, limit: str, scope: str, rate: SharedRate) -> float:
        """Take one event of `limit` for `scope` if it conforms across all nodes and return 0;
        else return the wait in seconds, taking nothing."""
        return (await self.try_acquire_at(limit, scope, rate)).wait_s

    async def take(self, limit: str, scope: str, rate: Rate) -> float:
        """`try_acquire` for a `Rate` as shaping gives it."""
        shared = self._rates.get(rate)
        if shared is None:
            shared = self._rates[rate] = SharedRate.from_rate(rate)
        return await self.try_acquire(limit, scope, shared)

    async def heartbeat(self, node_id: str, ttl_s: float) -> int:
        """Say this node is alive for `ttl_s` more; the number of nodes alive now (this one too)."""
        return int(_text(await self._run("heartbeat", self.prefix + "nodes", (node_id, _us(ttl_s)))))

    async def try_acquire_at(self, limit: str, scope: str, rate: SharedRate) -> RateAnswer:
        """`try_acquire`, also saying when (on the server's clock) the script ran."""
        reply = await self._run("gcra", self._key("rate", limit, scope), (rate.interval_us, rate.tolerance_us))
        assert isinstance(reply, list) and len(reply) == 2, reply
        wait_us, now_us = (int(_text(part)) for part in reply)
        return RateAnswer(wait_s=wait_us / 1_000_000, server_time_us=now_us)

    async def acquire_lease(self, scope: str, lease_id: str, limit: int, period_s: float) -> bool:
        """Take a connection lease for `scope` if fewer than `limit` unexpired ones are held
        (or renew `lease_id` if it is one of them)."""
        return bool(await self._run("acquire", self._key("leases", scope), (lease_id, limit, _us(period_s))))

    async def extend_lease(self, scope: str, lease_id: str, period_s: float) -> bool:
        """Move an unexpired lease's expiry to `period_s` from now; False if it had lapsed."""
        return bool(await self._run("extend", self._key("leases", scope), (lease_id, _us(period_s))))

    async def release_lease(self, scope: str, lease_id: str) -> None:
        await self._run("release", self._key("leases", scope), (lease_id,))

    async def lease_count(self, scope: str) -> int:
        """The unexpired leases held for `scope` by all nodes."""
        return int(_text(await self._run("count", self._key("leases", scope), ())))

    def _key(self, kind: str, *parts: str) -> str:
        return self.prefix + kind + ":" + ":".join(parts)

    async def _run(self, name: str, key: str, args: Sequence[str | int]) -> object:
        client = self._client
        if client is None:
            raise ClusterUnavailable("not connected (outside RedisLimits.session())")
        try:
            with trio.fail_after(self.timeout_s):
                sha = self._shas.get(name)
                if sha is None:
                    sha = self._shas[name] = _text(await client.script_load(_SCRIPTS[name]))
                try:
                    return await client.evalsha(sha, keys=[key], args=list(args))
                except coredis.exceptions.NoScriptError:
                    sha = self._shas[name] = _text(await client.script_load(_SCRIPTS[name]))
                    return await client.evalsha(sha, keys=[key], args=list(args))
        except trio.TooSlowError:
            self._shas.clear()
            raise ClusterUnavailable(f"no answer from {display_url(self.url)} within {self.timeout_s:g}s") from None
        except (coredis.exceptions.RedisError, OSError) as exc:
            self._shas.clear()
            raise ClusterUnavailable(f"{display_url(self.url)}: {exc or type(exc).__name__}") from None


def _us(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1_000_000))


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
