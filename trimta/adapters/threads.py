"""A thread of one's own for blocking calls made often: the spool's commits.

`trio.to_thread.run_sync` is general (limiters, context copies, a thread cache with
per-job thread naming, cancellation options) and costs accordingly; measured on a
2-core VM, one round trip through it cost ~300 µs of CPU, a dedicated thread fed by
a `queue.SimpleQueue` ~60 µs (docs/performance.md). `DedicatedThread` is the latter:
one long-lived thread that runs the calls given to it one at a time, in order.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import trio

T = TypeVar("T")

_STOP = object()


class DedicatedThread:
    """Runs blocking calls, one at a time, in one thread that lives as long as it is open.

    ``async with DedicatedThread("name") as thread: await thread.run_sync(fn, *args)``.
    Like `trio.to_thread.run_sync` without `abandon_on_cancel`: a call, once given to
    the thread, is waited for even if the caller is cancelled meanwhile (the
    cancellation is delivered after it), so its outcome is never lost.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None

    async def __aenter__(self) -> DedicatedThread:
        self._token = trio.lowlevel.current_trio_token()
        self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
        self._thread.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Let the thread end once the calls already given to it are done."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread = None

    async def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in the thread: its result, or the exception it raised."""
        if self._thread is None:
            raise RuntimeError(f"the thread {self.name!r} is not running")
        call = _Call(fn, args, trio.lowlevel.current_task())
        self._queue.put(call)
        await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)
        if call.error is not None:
            raise call.error
        return call.result

    def _work(self) -> None:
        get = self._queue.get
        token = self._token
        assert token is not None
        reschedule = trio.lowlevel.reschedule
        while True:
            call = get()
            if call is _STOP:
                return
            try:
                call.result = call.fn(*call.args)
            except BaseException as exc:  # noqa: BLE001 (handed to the caller, raised there)
                call.error = exc
            try:
                token.run_sync_soon(reschedule, call.task)
            except trio.RunFinishedError:
                return


class _Call:
    __slots__ = ("fn", "args", "task", "result", "error")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], task: trio.lowlevel.Task) -> None:
        self.fn = fn
        self.args = args
        self.task = task
        self.result: Any = None
        self.error: BaseException | None = None
