"""Inject requests with ``deferred_generation``: kept durably, answered at once, generated later.

KumoMTA queues such a request and expands it into messages in the background, so a
client can hand over a million recipients in one quick call. trimta does the same: the
request (validated, its templates compiled, so a mistake is still answered 400) is
written to a file in ``<spool>/deferred-inject/`` and fsynced before the answer, and a
background task generates its messages, a chunk of recipients at a time. After each
chunk is durable in the spool, the file is rewritten with the recipients still to do,
so a crash or a restart resumes where it was: a recipient is injected at least once,
and at most the chunk that was under way when the daemon stopped is injected twice.

A chunk whose messages the spool could not store (``server_failed``) is tried again
after `retry_s`; recipients that fail for their own reasons (a template error, a bad
address) are logged and dropped, as an immediate request would have reported them.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from trimta.adapters.rules_store import write_atomically
from trimta.services.inject import Injector, parse_inject_request

log = logging.getLogger(__name__)

CHUNK = 100


def _write_durably(path: Path, document: dict[str, Any]) -> None:
    write_atomically(path, json.dumps(document, separators=(",", ":")).encode())


class DeferredInjections:
    """The queue of deferred inject requests and the task that generates their messages."""

    def __init__(self, directory: Path, injector: Injector, *, retry_s: float = 30.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self.injector = injector
        self.retry_s = retry_s
        self.clock = clock
        self._wake = trio.Event()
        self.generated = 0  # messages generated since start
        self.pending_requests = 0

    async def submit(self, body: dict[str, Any], *, peer: str, listener: str) -> None:
        """Keep `body` (an inject request already validated) durably; returns once it is on disk."""
        name = f"{time.time_ns():020d}-{os.urandom(4).hex()}.json"
        document = {"peer": peer, "listener": listener, "request": {**body, "deferred_generation": False}}
        await trio.to_thread.run_sync(self._store, self.directory / name, document)
        self._wake.set()

    def _store(self, path: Path, document: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_durably(path, document)

    def _pending(self) -> list[Path]:
        try:
            return sorted(p for p in self.directory.iterdir() if p.suffix == ".json")
        except FileNotFoundError:
            return []

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            pending = await trio.to_thread.run_sync(self._pending)
            self.pending_requests = len(pending)
            retry = False
            for path in pending:
                retry = not await self._generate(path) or retry
            if retry:
                with trio.move_on_after(self.retry_s):
                    await self._wake.wait()
            else:
                await self._wake.wait()
            self._wake = trio.Event()

    async def _generate(self, path: Path) -> bool:
        """Generate one request's messages; False if the spool refused some (try later)."""
        try:
            document = json.loads(await trio.to_thread.run_sync(path.read_bytes))
            body = document["request"]
            recipients = list(body["recipients"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("deferred inject request %s is unreadable (%s); moved aside", path.name, exc)
            await trio.to_thread.run_sync(os.replace, path, path.with_suffix(".damaged"))
            return True
        while recipients:
            chunk, rest = recipients[:CHUNK], recipients[CHUNK:]
            try:
                request = parse_inject_request({**body, "recipients": chunk})
            except Exception as exc:  # noqa: BLE001 (it was valid when accepted; a new version may disagree)
                log.error("deferred inject request %s no longer parses (%s); dropped", path.name, exc)
                break
            result = await self.injector.inject(request, peer=document.get("peer", ""),
                                                listener=document.get("listener", ""))
            if result.server_failed:
                log.warning("deferred inject request %s: the spool refused messages; trying again in %.0fs",
                            path.name, self.retry_s)
                return False
            self.generated += result.success_count
            for error in result.errors:
                log.warning("deferred inject request %s: %s", path.name, error)
            recipients = rest
            if recipients:
                await trio.to_thread.run_sync(_write_durably, path, {**document, "request": {
                    **body, "recipients": recipients}})
        await trio.to_thread.run_sync(path.unlink)
        return True
