"""Operator rules shared by several nodes through Redis: stored, published, resynced.

Every rule in force (suspensions, admin bounces, ready-queue suspensions, option
overrides; automation's actions are such rules too) is one field of a hash, its expiry
the score of a sorted set, and every change bumps a version counter and is published
on one channel, all in one Lua script, so a change and its announcement cannot part:

    {trimta:rules}          hash     rule id -> JSON (times on the Redis server's clock)
    {trimta:rules}:expiry   zset     rule id -> expiry (server epoch seconds)
    {trimta:rules}:version  string   bumped by every change
    {trimta:rules}:seeded   string   set once the rules have been written by some node
    {trimta:rules}:changes  channel  "VERSION JSON" per change

A node follows the channel (`follow`): on every (re)connection it subscribes first,
then reads the whole set (dropping the expired) and hands it to its rules as the
truth (`resync`), then applies each change as it comes. A version that skips one
(a message lost) makes it read the whole set again. A node's own announcements come
back to it and are skipped.

Clocks: a rule's times are kept on the server's clock (``TIME``) and each node turns
them into its own with the offset it measured at its last read, so every node ends a
rule at the same moment whatever its own clock says.

Redis away: `publish` and `withdraw` keep the change (in order, in memory and in
``operator-rules-unshared.json`` in the spool directory) and return False; it is
written when Redis answers again, before the set is read, so a rule made during an
outage is not lost to the resync, even if the node was restarted meanwhile. If Redis comes back without
the rules at all (a new server, its data lost: no ``seeded`` key), the first node to
see it writes the rules it holds, and the others take those.

Every call is bounded by `timeout_s`; connection errors, timeouts and error replies
are translated here, once, into `ClusterUnavailable`.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import anyio
import coredis
import coredis.exceptions
import trio
from coredis.retry import NoRetryPolicy

from trimta.adapters.cluster_config import ClusterConfig, display_url
from trimta.adapters.redis_limits import ClusterUnavailable
from trimta.adapters.rules_store import write_atomically
from trimta.core.admin import AnyRule, rule_from_dict, rule_to_dict

log = logging.getLogger(__name__)

PUT_SCRIPT = """
local v = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('SET', KEYS[4], '1')
redis.call('PUBLISH', KEYS[5], v .. ' ' .. ARGV[4])
return v
"""

REMOVE_SCRIPT = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
local v = redis.call('INCR', KEYS[3])
redis.call('PUBLISH', KEYS[5], v .. ' ' .. ARGV[2])
return v
"""

LOAD_SCRIPT = """
local t = redis.call('TIME')
local now = string.format('%d.%06d', t[1], t[2])
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, id in ipairs(gone) do redis.call('HDEL', KEYS[1], id) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
return {redis.call('GET', KEYS[3]) or '0', redis.call('GET', KEYS[4]) or '', t[1], t[2],
        redis.call('HVALS', KEYS[1])}
"""

class RuleListener(Protocol):
    """The node's rules, as the follower keeps them in step (`OperatorRules`)."""

    def rules_in_force(self) -> list[AnyRule]: ...
    async def resync(self, rules: Sequence[AnyRule]) -> None: ...
    async def shared_put(self, rule: AnyRule) -> None: ...
    async def shared_removed(self, rule_id: str) -> None: ...


_SCRIPTS = {"put": PUT_SCRIPT, "remove": REMOVE_SCRIPT, "load": LOAD_SCRIPT}
RETRY_S = 1.0  # between attempts to reach Redis during an outage
OUTBOX_FILE = "operator-rules-unshared.json"  # in the spool directory


class RedisRules:
    """This node's side of the shared operator rules (a `SharedRules`); run `follow`."""

    def __init__(self, url: str, *, clock: Callable[[], float] = time.time, timeout_s: float = 1.0,
                 pool_size: int = 2, prefix: str = "trimta:", retry_s: float = RETRY_S,
                 outbox_dir: Path | None = None) -> None:
        self.url = url
        self.clock = clock
        self.timeout_s = timeout_s
        self.pool_size = pool_size
        self.retry_s = retry_s
        base = "{" + prefix + "rules}"
        self._keys = [base, base + ":expiry", base + ":version", base + ":seeded", base + ":changes"]
        self.channel = self._keys[4]
        self.origin = uuid.uuid4().hex  # tells this node's announcements from the others'
        self._client: coredis.Redis[bytes] | None = None
        self._shas: dict[str, str] = {}
        self._offset_s = 0.0  # server clock minus this node's, as last measured
        self._version = 0
        # ("put", rule) / ("remove", id) made while Redis was away, kept in `outbox_path` too
        # (so a node restarted before Redis returns still writes them).
        self.outbox_path = outbox_dir / OUTBOX_FILE if outbox_dir is not None else None
        self._outbox: list[tuple[str, Any]] = self._load_outbox()
        self._lock = trio.Lock()  # one writer at a time: the outbox keeps its order
        self._seeded = False
        self._session_scope = trio.CancelScope()
        self.connected = False
        self.outages = 0
        self.resyncs = 0

    @classmethod
    def from_config(cls, config: ClusterConfig, spool_dir: Path, *,
                    clock: Callable[[], float] = time.time) -> RedisRules:
        return cls(config.redis_url, clock=clock, timeout_s=config.timeout_s, pool_size=min(2, config.pool_size),
                   outbox_dir=spool_dir)

    # --- changes kept while Redis is away -----------------------------------------------------

    def _load_outbox(self) -> list[tuple[str, Any]]:
        if self.outbox_path is None:
            return []
        try:
            items = json.loads(self.outbox_path.read_text(encoding="utf-8"))
            return [("put", rule_from_dict(item["rule"])) if item["op"] == "put" else ("remove", str(item["id"]))
                    for item in items]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("operator rule changes kept for Redis in %s are not readable, dropped: %s",
                      self.outbox_path, exc)
            return []

    async def _save_outbox(self) -> None:
        if self.outbox_path is None:
            return
        items = [{"op": "put", "rule": rule_to_dict(what)} if op == "put" else {"op": "remove", "id": what}
                 for op, what in self._outbox]
        try:
            await trio.to_thread.run_sync(write_atomically, self.outbox_path, json.dumps(items).encode())
        except OSError as exc:
            log.error("operator rule changes for Redis not kept in %s (kept in memory): %s", self.outbox_path, exc)

    async def _keep(self, change: tuple[str, Any]) -> None:
        self._outbox.append(change)
        await self._save_outbox()

    # --- changes made on this node -------------------------------------------------------------

    async def publish(self, rule: AnyRule) -> bool:
        """Store `rule` and announce it; False: Redis is away, it is written on reconnect."""
        return await self._write(("put", rule))

    async def withdraw(self, rule_id: str) -> bool:
        """Remove a rule (cancelled) and announce it; False: Redis is away, done on reconnect."""
        return await self._write(("remove", rule_id))

    async def _write(self, change: tuple[str, Any]) -> bool:
        async with self._lock:
            if self._client is None or not self.connected or self._outbox:
                await self._keep(change)
                return False
            try:
                await self._send(change)
            except ClusterUnavailable as exc:
                await self._keep(change)
                log.warning("operator rule change kept on this node until Redis answers: %s", exc)
                self._session_scope.cancel()  # reconnect: the change is written before the next resync
                return False
            return True

    async def _send(self, change: tuple[str, Any]) -> None:
        op, what = change
        if op == "put":
            shifted = _shift(what, self._offset_s)
            body = json.dumps({"origin": self.origin, "op": "put", "rule": rule_to_dict(shifted)})
            await self._run("put", (shifted.id, json.dumps(rule_to_dict(shifted)), repr(shifted.expires), body))
        else:
            body = json.dumps({"origin": self.origin, "op": "remove", "id": what})
            await self._run("remove", (what, body))

    # --- following the others ---------------------------------------------------------------------

    async def follow(self, listener: RuleListener, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                     ) -> None:
        """Keep `listener` in step with the shared rules, forever; reconnects after an outage.

        Started once the first read is done or has failed (each bounded by the timeout),
        so a node that reaches Redis applies the cluster's rules before it delivers."""
        started = False

        def ready() -> None:
            nonlocal started
            if not started:
                started = True
                task_status.started()

        while True:
            with trio.CancelScope() as self._session_scope:
                try:
                    await self._session(listener, ready)
                except ClusterUnavailable as exc:
                    self._disconnected(str(exc))
            if self._session_scope.cancelled_caught:
                self._disconnected("a write did not get through")
            ready()
            await trio.sleep(self.retry_s)

    async def _session(self, listener: RuleListener, ready: Callable[[], None]) -> None:
        client: coredis.Redis[bytes] = coredis.Redis.from_url(
            self.url, stream_timeout=self.timeout_s, connect_timeout=self.timeout_s,
            max_connections=self.pool_size, verify_version=False,
        )
        try:
            async with client:
                self._client = client
                async with client.pubsub(retry_policy=NoRetryPolicy(), ignore_subscribe_messages=True,
                                         subscription_timeout=self.timeout_s,
                                         max_idle_seconds=max(1.0, 5 * self.timeout_s)) as pubsub:
                    await pubsub.subscribe(self.channel)
                    await self._resync(listener)
                    ready()
                    async for message in pubsub:
                        if message["type"] == "message":
                            await self._apply(listener, message["data"])
        except (trio.TooSlowError, TimeoutError):
            raise ClusterUnavailable(f"no answer from {display_url(self.url)} within {self.timeout_s:g}s") from None
        except (coredis.exceptions.RedisError, OSError) as exc:
            raise ClusterUnavailable(f"{display_url(self.url)}: {exc or type(exc).__name__}") from None
        except BaseExceptionGroup as group:
            # coredis's pub/sub, cancelled, unsubscribes on the connection it has just closed:
            # that error says nothing.
            _, rest = group.split(anyio.ClosedResourceError)
            if rest is None:
                raise ClusterUnavailable(f"{display_url(self.url)}: connection closed") from None
            matched, other = rest.split((coredis.exceptions.RedisError, OSError, trio.TooSlowError, TimeoutError,
                                         ClusterUnavailable))
            if other is not None:
                raise other from None
            assert matched is not None
            raise ClusterUnavailable(f"{display_url(self.url)}: {_first(matched)}") from None
        finally:
            self._client = None
            self._shas.clear()
        # The subscription ended without an error: the server closed it.
        raise ClusterUnavailable(f"{display_url(self.url)}: subscription closed")

    async def _resync(self, listener: RuleListener) -> None:
        """Write what was kept during an outage, then take the whole set as the truth."""
        async with self._lock:
            self._measure_offset(await self._load())
            if not self._seeded:
                rules = listener.rules_in_force()
                if rules:
                    log.warning("Redis %s holds no operator rules: writing this node's %d", display_url(self.url),
                                len(rules))
                for rule in rules:
                    await self._send(("put", rule))
            if self._outbox:
                now = self.clock()
                for op, what in self._outbox:
                    if op == "remove" or what.expires > now:
                        await self._send((op, what))
                self._outbox.clear()
                await self._save_outbox()
            rules = self._measure_offset(await self._load())
            if not self.connected and self.outages:
                log.warning("Redis %s answers again: operator rules resynced (%d in force)",
                            display_url(self.url), len(rules))
            self.connected = True
            self.resyncs += 1
        await listener.resync(rules)

    def _measure_offset(self, loaded: tuple[int, bool, float, float, list[AnyRule]]) -> list[AnyRule]:
        version, seeded, before, server_now, stored = loaded
        self._offset_s = server_now - (before + self.clock()) / 2
        self._version = version
        self._seeded = seeded
        return [_shift(rule, -self._offset_s) for rule in stored]

    async def _load(self) -> tuple[int, bool, float, float, list[AnyRule]]:
        before = self.clock()
        reply = await self._run("load", ())
        assert isinstance(reply, list) and len(reply) == 5, reply
        version, seeded, seconds, micros, values = reply
        rules = []
        for value in values:
            try:
                rules.append(rule_from_dict(json.loads(_text(value))))
            except ValueError as exc:
                log.error("a shared operator rule in Redis is not understood, ignored: %s", exc)
        return int(_text(version)), bool(_text(seeded)), before, int(seconds) + int(micros) / 1e6, rules

    async def _apply(self, listener: RuleListener, data: object) -> None:
        version_text, _, body = _text(data).partition(" ")
        try:
            version = int(version_text)
            change = json.loads(body)
        except ValueError:
            log.error("an operator rule announcement is not understood, ignored: %.200s", _text(data))
            return
        if version <= self._version:
            return  # in the set read at the last resync already
        if version > self._version + 1:
            log.info("operator rule announcements %d..%d missed: resyncing", self._version + 1, version - 1)
            await self._resync(listener)
            return
        self._version = version
        if change.get("origin") == self.origin:
            return
        if change.get("op") == "put":
            try:
                rule = _shift(rule_from_dict(change["rule"]), -self._offset_s)
            except (ValueError, KeyError, TypeError) as exc:
                log.error("a shared operator rule announcement is not understood, ignored: %s", exc)
                return
            await listener.shared_put(rule)
        elif change.get("op") == "remove":
            await listener.shared_removed(str(change.get("id")))

    def _disconnected(self, why: str) -> None:
        if self.connected or not self.outages:
            self.outages += 1
            log.warning("Redis for operator rules unavailable (%s): rules made here hold on this node only "
                        "until it answers", why)
        self.connected = False

    # --- the seam -----------------------------------------------------------------------------

    async def _run(self, name: str, args: Sequence[str | int]) -> object:
        client = self._client
        if client is None:
            raise ClusterUnavailable("not connected")
        try:
            with trio.fail_after(self.timeout_s):
                sha = self._shas.get(name)
                if sha is None:
                    sha = self._shas[name] = _text(await client.script_load(_SCRIPTS[name]))
                try:
                    return await client.evalsha(sha, keys=self._keys, args=list(args))
                except coredis.exceptions.NoScriptError:
                    sha = self._shas[name] = _text(await client.script_load(_SCRIPTS[name]))
                    return await client.evalsha(sha, keys=self._keys, args=list(args))
        except trio.TooSlowError:
            self._shas.clear()
            raise ClusterUnavailable(f"no answer from {display_url(self.url)} within {self.timeout_s:g}s") from None
        except (coredis.exceptions.RedisError, OSError) as exc:
            self._shas.clear()
            raise ClusterUnavailable(f"{display_url(self.url)}: {exc or type(exc).__name__}") from None


def _shift(rule: AnyRule, seconds: float) -> AnyRule:
    if seconds == 0 or not math.isfinite(rule.expires):
        return rule
    return replace(rule, created=rule.created + seconds, expires=rule.expires + seconds)


def _first(group: BaseExceptionGroup[BaseException]) -> str:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return str(exc) or type(exc).__name__


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
