"""DedicatedThread: blocking calls in one long-lived thread, results and errors back in trio."""

from __future__ import annotations

import threading

import pytest
import trio
import trio.testing

from trimta.adapters.threads import DedicatedThread


async def test_returns_the_result_from_another_thread() -> None:
    async with DedicatedThread("test") as thread:
        name = await thread.run_sync(lambda: threading.current_thread().name)
        assert name == "test"
        assert await thread.run_sync(pow, 2, 10) == 1024


async def test_raises_what_the_call_raised() -> None:
    async with DedicatedThread("test") as thread:
        with pytest.raises(ZeroDivisionError):
            await thread.run_sync(lambda: 1 / 0)
        assert await thread.run_sync(lambda: "still serving") == "still serving"


async def test_calls_run_one_at_a_time_in_order() -> None:
    order: list[int] = []
    async with DedicatedThread("test") as thread, trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(thread.run_sync, order.append, i)
            await trio.lowlevel.checkpoint()
    assert order == list(range(20))


async def test_a_cancelled_caller_still_waits_for_its_call() -> None:
    started, release = threading.Event(), threading.Event()
    done: list[str] = []

    def slow() -> str:
        started.set()
        release.wait(10)
        done.append("finished")
        return "finished"

    caller = trio.CancelScope()
    results: list[object] = []

    async def call(thread: DedicatedThread) -> None:
        with caller:
            results.append(await thread.run_sync(slow))

    async with DedicatedThread("test") as thread, trio.open_nursery() as nursery:
        nursery.start_soon(call, thread)
        await trio.to_thread.run_sync(started.wait, 10)
        caller.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert not done  # the caller is still waiting: no outcome is lost
        release.set()
    assert done == ["finished"]
    # The call's result arrived; the cancellation was delivered after it, at the
    # caller's next checkpoint (there is none in `call`, so the result is kept).
    assert results == ["finished"] and not caller.cancelled_caught


async def test_refuses_calls_once_closed() -> None:
    thread = DedicatedThread("test")
    async with thread:
        pass
    with pytest.raises(RuntimeError):
        await thread.run_sync(int)
