import trio

from trimta.core.message import Message, Reception
from trimta.core.retry import QueueConfig
from trimta.core.units import parse_rate
from trimta.services.scheduler import Scheduler


def message(i: int, domain: str, tenant: str | None = None) -> Message:
    return Message.new(data_id=f"d{i}", sender="s@x", recipient=f"u{i}@{domain}", tenant=tenant,
                       campaign=None, size=1, created=0.0, reception=Reception(), id=f"m{i:06d}")


async def test_hundred_thousand_queues_share_one_timer_task(autojump_clock):
    out: list[Message] = []
    s = Scheduler(queue_config=lambda t, c, d: QueueConfig(), dispatch=out.append, clock=trio.current_time)
    now = trio.current_time()
    for i in range(100_000):
        s.add(message(i, f"d{i}.example"), now + 10 + (i % 100))
    assert s.statistics().queues == 100_000
    async with trio.open_nursery() as nursery:
        await nursery.start(s.run)
        (timer_task,) = nursery.child_tasks  # one task for every queue
        assert not timer_task.child_nurseries
        with trio.fail_after(1000):
            while len(out) < 100_000:
                await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert s.statistics().queues == 0  # reaped when empty
    assert [m.due for m in out] == sorted(m.due for m in out)


async def test_message_is_dispatched_at_its_due_time(autojump_clock):
    times = []
    s = Scheduler(queue_config=lambda t, c, d: QueueConfig(),
                  dispatch=lambda m: times.append(trio.current_time()), clock=trio.current_time)
    async with trio.open_nursery() as nursery:
        await nursery.start(s.run)
        start = trio.current_time()
        s.add(message(1, "a.example"), start + 30)
        s.add(message(2, "a.example"), start + 5)
        with trio.fail_after(100):
            while len(times) < 2:
                await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    assert [t - start for t in times] == [5, 30]


async def test_queue_message_rate_throttles_without_an_attempt(autojump_clock):
    out: list[tuple[float, Message]] = []
    config = QueueConfig(max_message_rate=parse_rate("10/min"))
    s = Scheduler(queue_config=lambda t, c, d: config,
                  dispatch=lambda m: out.append((trio.current_time(), m)), clock=trio.current_time)
    async with trio.open_nursery() as nursery:
        await nursery.start(s.run)
        start = trio.current_time()
        for i in range(30):
            s.add(message(i, "a.example", tenant="acme"), start)
        with trio.fail_after(1000):
            while len(out) < 30:
                await trio.sleep(1)
        nursery.cancel_scope.cancel()
    per_minute = [sum(1 for t, _ in out if start + 60 * k <= t < start + 60 * (k + 1)) for k in range(3)]
    assert per_minute == [10, 10, 10]
    assert all(m.attempts == 0 for _, m in out)


async def test_discarded_message_is_never_dispatched(autojump_clock):
    out = []
    s = Scheduler(queue_config=lambda t, c, d: QueueConfig(), dispatch=out.append, clock=trio.current_time)
    m = message(1, "a.example")
    s.add(m, trio.current_time() + 10)
    assert s.discard(m.id) is m
    async with trio.open_nursery() as nursery:
        await nursery.start(s.run)
        await trio.sleep(20)
        nursery.cancel_scope.cancel()
    assert out == []
    assert s.statistics().queues == 0
