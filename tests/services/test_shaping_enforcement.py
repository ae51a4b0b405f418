"""Traffic-shaping options enforced by the ready-queue tree, proven in virtual time."""

import dataclasses
import math
import tomllib

import trio

from trimta.adapters.delivery_config import parse_delivery_config
from trimta.core.egress import EgressPathConfig
from trimta.core.egress_options import StaticPathProvider
from trimta.core.units import parse_rate
from trimta.testing.network import accepting

from .conftest import DELIVERY_BASE, example_net_harness

harness = example_net_harness
BASE = DELIVERY_BASE


def per_window(times: list[float], start: float, window: float) -> list[int]:
    n = math.ceil((max(times) - start + 1e-9) / window)
    return [sum(1 for t in times if start + k * window <= t < start + (k + 1) * window) for k in range(n)]


def sliding_max(times: list[float], window: float) -> int:
    """Most events in any window of `window` seconds (a microsecond's slack for float sums)."""
    times = sorted(times)
    return max(sum(1 for u in times[i:] if u < t + window - 1e-6) for i, t in enumerate(times))


async def test_max_message_rate_100_per_minute(autojump_clock):
    h = harness('[egress.domains."example.net"]\nmax_message_rate = "100/min"\n')
    mx = h.network.add_receiver("127.0.0.10", 25, accepting())
    with trio.fail_after(10_000):
        async with h.running():
            start = trio.current_time()
            await h.inject(recipients=[f"u{i}@example.net" for i in range(500)])
            await h.wait_until_settled()
    times = sorted(m.received_at for m in mx.messages)
    assert len(times) == 500
    assert sliding_max(times, 60.0) <= 100
    # At the limit, not below it: exactly 100 in each minute from the first delivery.
    assert per_window(times, times[0], 60.0) == [100] * 5
    assert (max(times) - start) / 60 < 5.0


def connections_first(messages) -> set[int]:
    """Indexes of the messages that were the first on their connection."""
    seen, first = set(), set()
    for i, m in enumerate(messages):
        if id(m.connection) not in seen:
            seen.add(id(m.connection))
            first.add(i)
    return first


async def test_max_message_rate_300_per_second_is_reached_across_many_connections(autojump_clock):
    # Every reply takes 10 ms, so one connection sends about 30 a second: the limit is
    # reached only by the connections together, through the one limiter they share.
    h = harness('[egress.domains."example.net"]\nmax_message_rate = "300/s"\n')
    mx = h.network.add_receiver("127.0.0.10", 25, accepting(latency_s=0.01))
    with trio.fail_after(10_000):
        async with h.running():
            start = trio.current_time()
            await h.inject(recipients=[f"u{i}@example.net" for i in range(1500)])
            await h.wait_until_settled()
    assert len(mx.messages) == 1500
    assert h.network.peak_connections > 10
    times = sorted(m.received_at for m in mx.messages)
    # 300 in each second once the connections are open, and 1500 take five seconds.
    assert per_window(times, times[0], 1.0)[1:4] == [300, 300, 300]
    assert max(times) - start < 5.05
    # Once its connection is open, each message reaches the receiver the same time after
    # its turn: those never exceed 300 in any second.
    first = connections_first(mx.messages)
    assert sliding_max([m.received_at for i, m in enumerate(mx.messages) if i not in first], 1.0) <= 300


async def test_max_message_rate_holds_at_the_receiver_while_connections_open(autojump_clock):
    h = harness('[egress.domains."example.net"]\nmax_message_rate = "300/s"\n')
    mx = h.network.add_receiver("127.0.0.10", 25, accepting(latency_s=0.01))
    with trio.fail_after(10_000):
        async with h.running():
            await h.inject(recipients=[f"u{i}@example.net" for i in range(600)])
            await h.wait_until_settled()
    assert sliding_max([m.received_at for m in mx.messages], 1.0) <= 300


async def test_connections_opened_for_reserved_turns_each_send_and_the_receiver_count_holds(autojump_clock):
    # Replies take 0.3 s, so 20/s takes many connections, opened while messages go: each
    # opens only for a turn reserved for it and uses that turn (no connection without a
    # message), and its connect, banner and EHLO (0.9 s) do not bunch the messages up at
    # the receiver (34 in a second before turns were counted when used).
    h = harness('[egress.domains."example.net"]\nmax_message_rate = "20/s"\nidle_timeout = "1s"\n')
    mx = h.network.add_receiver("127.0.0.10", 25, accepting(latency_s=0.3))
    with trio.fail_after(10_000):
        async with h.running():
            await h.inject(recipients=[f"u{i}@example.net" for i in range(200)])
            await h.wait_until_settled()
    assert len(mx.messages) == 200
    assert len(h.network.connections) > 10
    assert all(c.messages >= 1 for c in h.network.connections)
    assert sliding_max([m.received_at for m in mx.messages], 1.0) <= 20


async def test_max_message_rate_with_max_burst_sends_the_burst_then_paces(autojump_clock):
    h = harness('[egress.domains."example.net"]\nmax_message_rate = "20/min,max_burst=5"\n')
    mx = h.network.add_receiver("127.0.0.10", 25, accepting())
    with trio.fail_after(10_000):
        async with h.running():
            start = trio.current_time()
            await h.inject(recipients=[f"u{i}@example.net" for i in range(100)])
            await h.wait_until_settled()
    times = sorted(m.received_at for m in mx.messages)
    assert len(times) == 100
    # Five at once, then 20 a minute: 24 in the first minute, never more in any minute.
    assert sum(1 for t in times if t == times[0]) == 5
    assert sliding_max(times, 60.0) == 24
    assert per_window(times, times[0], 60.0)[1:4] == [20, 20, 20]
    assert times[0] - start < 1


async def test_max_connection_rate(autojump_clock):
    h = harness('[egress.domains."example.net"]\nmax_connection_rate = "6/min"\nmax_deliveries_per_connection = 1\n')
    h.network.add_receiver("127.0.0.10", 25, accepting())
    with trio.fail_after(10_000):
        async with h.running():
            await h.inject(recipients=[f"u{i}@example.net" for i in range(30)])
            await h.wait_until_settled()
    opened = [c.opened_at for c in h.network.connections]
    assert len(opened) == 30
    assert sliding_max(opened, 60.0) <= 6


async def test_rate_wait_longer_than_idle_timeout_closes_connections(autojump_clock):
    h = harness('[egress.domains."example.net"]\nmax_message_rate = "1/min"\nidle_timeout = "10s"\n')
    h.network.add_receiver("127.0.0.10", 25, accepting())
    with trio.fail_after(10_000):
        async with h.running():
            await h.inject(recipients=[f"u{i}@example.net" for i in range(3)])
            await h.wait_until_settled()
    # One message a minute: no connection is held open through the 60 s waits.
    assert [c.messages for c in h.network.connections] == [1, 1, 1]
    assert all(c.closed_at - c.opened_at < 15 for c in h.network.connections)


class ProviderPaths(StaticPathProvider):
    """Two sites of one provider sharing a connection limit of 2 and a rate of 60/min."""

    def path_config(self, source, site, domain):
        return dataclasses.replace(
            EgressPathConfig(prohibited_hosts=()), connection_limit=10, provider="bigmail",
            provider_connection_limit=2, provider_max_message_rate=parse_rate("60/min"),
        )


async def test_provider_limits_are_shared_across_two_sites(autojump_clock):
    h = harness(paths=ProviderPaths())
    h.resolver.add_domain("one.example", "127.0.0.11")
    h.resolver.add_domain("two.example", "127.0.0.12")
    one = h.network.add_receiver("127.0.0.11", 25, accepting(latency_s=0.5))
    two = h.network.add_receiver("127.0.0.12", 25, accepting(latency_s=0.5))
    with trio.fail_after(10_000):
        async with h.running():
            await h.inject(recipients=[f"a{i}@one.example" for i in range(60)] + [f"b{i}@two.example" for i in range(60)])
            await h.wait_until_settled()
    assert len(one.messages) == 60 and len(two.messages) == 60
    assert h.network.peak_connections <= 2
    times = [m.received_at for m in one.messages + two.messages]
    assert sliding_max(times, 60.0) <= 60


async def test_per_source_override_applies_only_to_that_source(autojump_clock):
    h = harness("""
[sources.s1]
source_address = "127.0.0.2"
[sources.s2]
source_address = "127.0.0.3"
[pools.p]
entries = [{ name = "s1" }, { name = "s2" }]
[queues]
egress_pool = "p"
[egress.domains."example.net"]
connection_limit = 1
[egress.sources."s1"]
max_deliveries_per_connection = 1
""")
    h.network.add_receiver("127.0.0.10", 25, accepting())
    with trio.fail_after(10_000):
        async with h.running():
            await h.inject(recipients=[f"u{i}@example.net" for i in range(40)])
            await h.wait_until_settled()
    by_source = {}
    for c in h.network.connections:
        by_source.setdefault(c.source_address, []).append(c.messages)
    assert by_source["127.0.0.2"] == [1] * 20
    assert sum(by_source["127.0.0.3"]) == 20 and len(by_source["127.0.0.3"]) < 5


async def test_lowered_connection_limit_on_reload_closes_connections_down_to_it(autojump_clock):
    h = harness('[egress.domains."example.net"]\nconnection_limit = 6\n')
    mx = h.network.add_receiver("127.0.0.10", 25, accepting(latency_s=1.0))
    with trio.fail_after(10_000):
        async with h.running():
            await h.inject(recipients=[f"u{i}@example.net" for i in range(300)])
            while h.network.connections_open < 6:
                await trio.sleep(0.1)
            from trimta.adapters.delivery_config import parse_delivery_config
            import tomllib

            lowered = parse_delivery_config(
                tomllib.loads(BASE + '[egress.domains."example.net"]\nconnection_limit = 2\n'), "<reload>"
            )
            h.engine.egress.reload(lowered.path_provider)
            reloaded_at = trio.current_time()
            await trio.sleep(5)  # each connection finishes its current message first
            after = []
            while len(mx.messages) < 300:
                after.append(h.network.connections_open)
                await trio.sleep(1)
    assert max(after) <= 2
    assert reloaded_at > 0


async def test_connection_limit_3_never_exceeded_while_10000_messages_drain(autojump_clock):
    h = harness('[egress.domains."example.net"]\nconnection_limit = 3\n')
    mx = h.network.add_receiver("127.0.0.10", 25, accepting(latency_s=0.01))
    with trio.fail_after(100_000):
        async with h.running():
            await h.inject(recipients=[f"u{i}@example.net" for i in range(10_000)])
            await h.wait_until_settled()
    assert len(mx.messages) == 10_000
    assert h.network.peak_connections == 3


async def test_consecutive_connection_failures_pause_the_ready_queue(autojump_clock):
    from trimta.testing.network import refusing

    h = harness('[egress.domains."example.net"]\nconnection_limit = 1\n'
                'consecutive_connection_failures_before_delay = 3\ndelay_after_connection_failures = "10m"\n'
                '[queues]\nretry_interval = "1s"\n')
    h.network.add_receiver("127.0.0.10", 25, refusing())
    with trio.fail_after(100_000):
        async with h.running():
            start = trio.current_time()
            await h.inject(recipients=[f"u{i}@example.net" for i in range(10)])
            await trio.sleep(9 * 60)
            attempts_in_pause = len(h.network.connect_attempts)
            await trio.sleep(2 * 60)
            attempts_after = len(h.network.connect_attempts)
    # Three refused connections, then nothing for ten minutes, then it tries again.
    assert attempts_in_pause == 3
    assert attempts_after > 3
    assert start >= 0


async def test_mx_rollup_false_gives_the_domain_its_own_ready_queue(autojump_clock):
    from trimta.adapters.shaping_files import ShapingProvider, parse_shaping_text
    from trimta.core.shaping import Shaping

    document, problems = parse_shaping_text('["own.example"]\nmx_rollup = false\nconnection_limit = 1\n', "t.toml")
    assert not problems
    config = parse_delivery_config(tomllib.loads(DELIVERY_BASE), "<test>")
    h = harness(paths=ShapingProvider(Shaping([document]), overrides=config.path_provider))
    h.resolver.add_mx("own.example", "mx.shared.example")
    h.resolver.add_mx("other.example", "mx.shared.example")
    h.resolver.add_host("mx.shared.example", "127.0.0.10")
    h.network.add_receiver("127.0.0.10", 25, accepting(latency_s=0.1))
    with trio.fail_after(100_000):
        async with h.running():
            await h.inject(recipients=[f"a{i}@own.example" for i in range(5)] + [f"b{i}@other.example" for i in range(5)])
            await h.wait_until_settled()
    queues = {r["domain"]: r["ready_queue"] for r in h.records("Delivery")}
    assert queues["own.example"] != queues["other.example"]
    assert queues["other.example"] == "unspecified->mx.shared.example@smtp_client"


async def test_try_next_host_on_transport_error_sends_again_at_once_on_the_next_connection(autojump_clock):
    # The first connection is dropped at RCPT TO (a transport error). With the option the
    # message gets its TransientFailure and goes out again on the next connection at
    # once; without it, it waits for its retry (20 minutes).
    from trimta.testing.network import Rule, ScriptedReceiver, DROP

    async def run(option: str) -> tuple[float, list]:
        h = harness(f'[egress.domains."example.net"]\n{option}\n')
        mx = h.network.add_receiver("127.0.0.10", 25, ScriptedReceiver(rules=[Rule("rcpt_to", DROP, times=1)]))
        with trio.fail_after(100_000):
            async with h.running():
                start = trio.current_time()
                await h.inject(recipients=["u@example.net"])
                await h.wait_until_settled()
        return mx.messages[0].received_at - start, h.records("TransientFailure")

    took, failures = await run("try_next_host_on_transport_error = true")
    assert took < 5 and len(failures) == 1 and failures[0]["num_attempts"] == 1
    took, failures = await run("")
    assert took >= 15 * 60 and len(failures) == 1


async def test_additional_message_rate_throttles_are_shared_by_every_path_that_names_them(autojump_clock):
    # Two destinations (two ready queues) naming one "global" throttle of 60/min: together
    # at most 60 a minute, though each path alone may send 100/s.
    from trimta.testing.harness import DeliveryHarness

    h = DeliveryHarness(config="""
[egress.default]
prohibited_hosts = []
additional_message_rate_throttles = { "global" = "60/min" }
max_message_rate = "100/s"
""")
    h.resolver.add_domain("one.example", "127.0.0.11")
    h.resolver.add_domain("two.example", "127.0.0.12")
    one = h.network.add_receiver("127.0.0.11", 25, accepting())
    two = h.network.add_receiver("127.0.0.12", 25, accepting())
    with trio.fail_after(10_000):
        async with h.running():
            await h.inject(recipients=[f"a{i}@one.example" for i in range(90)] + [f"b{i}@two.example" for i in range(90)])
            await h.wait_until_settled()
    times = sorted(m.received_at for m in one.messages + two.messages)
    assert len(times) == 180 and one.messages and two.messages
    assert sliding_max(times, 60.0) <= 60
    assert per_window(times, times[0], 60.0)[:2] == [60, 60]


async def test_additional_connection_limits_count_across_every_path_that_names_them(autojump_clock):
    # KumoMTA's "global-connection-limit" example: 4 connections in all, over two sites
    # whose own connection_limit is 10.
    from trimta.testing.harness import DeliveryHarness

    h = DeliveryHarness(config="""
[egress.default]
prohibited_hosts = []
connection_limit = 10
additional_connection_limits = { "global-connection-limit" = 4 }
""")
    h.resolver.add_domain("one.example", "127.0.0.11")
    h.resolver.add_domain("two.example", "127.0.0.12")
    one = h.network.add_receiver("127.0.0.11", 25, accepting(latency_s=0.5))
    two = h.network.add_receiver("127.0.0.12", 25, accepting(latency_s=0.5))
    with trio.fail_after(10_000):
        async with h.running():
            await h.inject(recipients=[f"a{i}@one.example" for i in range(100)] + [f"b{i}@two.example" for i in range(100)])
            await h.wait_until_settled()
    assert len(one.messages) == 100 and len(two.messages) == 100
    assert h.network.peak_connections == 4
    assert one.peak_connections >= 1 and two.peak_connections >= 1
