"""KumoMTA's helper data files (queue.lua's, sources.lua's, listener_domains.lua's), unchanged.

The examples of KumoMTA's documentation are named in ``[kumomta]`` of a trimta.toml
and drive the daemon's configuration, the listener and the delivery engine.
"""

from __future__ import annotations

import shutil
from functools import partial
import textwrap
from pathlib import Path

import pytest
import trio

from trimta.adapters.config import load_config
from trimta.adapters.config_base import ConfigError
from trimta.core.listener_domains import ListenerDomain, ReportHandling
from trimta.testing.harness import DeliveryHarness
from trimta.testing.network import deferring

from .conftest import DATA

HOURS = 3600.0


def config_dir(tmp_path: Path, trimta_toml: str, **files: str) -> Path:
    """A directory with trimta.toml and KumoMTA's example files under the names given."""
    for name, example in files.items():
        shutil.copy(DATA / example, tmp_path / name)
    path = tmp_path / "trimta.toml"
    path.write_text(textwrap.dedent(trimta_toml), encoding="utf-8")
    return path


KUMOMTA = """
[kumomta]
queues = "queues.toml"
sources = "sources.toml"
listener_domains = "listener_domains.toml"
"""
EXAMPLES = {"queues.toml": "docs-queue.toml", "sources.toml": "docs-sources.toml",
            "listener_domains.toml": "docs-listener_domains.toml"}


def load(tmp_path: Path, extra: str = ""):
    return load_config(config_dir(tmp_path, KUMOMTA + extra, **EXAMPLES))


def test_the_examples_load_with_each_unacted_option_named(tmp_path):
    config = load(tmp_path)
    names = {w.split(": ")[1] for w in config.delivery.warnings}
    assert names == {"scheduling_header"}  # log_oob and log_arf are acted on
    assert all(w.startswith(str(tmp_path)) for w in config.delivery.warnings)


def test_sources_and_weighted_pools(tmp_path):
    d = load(tmp_path).delivery
    assert {n: (s.source_address, s.ehlo_domain) for n, s in d.sources.items() if n != "unspecified"} == {
        "ip-1": ("10.0.0.1", "mta1.examplecorp.com"), "ip-2": ("10.0.0.2", "mta2.examplecorp.com"),
        "ip-3": ("10.0.0.3", "mta3.examplecorp.com")}
    assert d.pools["pool-1"].entries == (("ip-1", 1),)
    assert d.pools["pool-2"].entries == (("ip-2", 2), ("ip-3", 1))


def test_sources_through_a_proxy_as_kumomtas_sources_lua_takes_them(tmp_path):
    (tmp_path / "sources.toml").write_text("""
[source."ip-1"]
ha_proxy_server = "10.0.0.5:5000"
ha_proxy_source_address = "10.0.0.1"
suspend_when_proxy_unhealthy = { trigger = { Threshold = "3/5m" }, duration = "10m" }
ehlo_domain = "mta1.examplecorp.com"

[source."ip-2"]
socks5_proxy_server = "10.0.0.6:5000"
socks5_proxy_source_address = "10.0.0.2"
""")
    (tmp_path / "trimta.toml").write_text('[kumomta]\nsources = "sources.toml"\n')
    config = load_config(tmp_path / "trimta.toml")
    ip1 = config.delivery.sources["ip-1"]
    assert (ip1.ha_proxy_server, ip1.ha_proxy_source_address) == (("10.0.0.5", 5000), "10.0.0.1")
    assert ip1.suspend_when_proxy_unhealthy.duration_s == 600 and ip1.suspend_when_proxy_unhealthy.threshold.limit == 3
    assert not config.delivery.sources["ip-2"].proxied
    socks = [w for w in config.delivery.warnings if "socks5" in w]
    assert len(socks) == 2 and all("goes out directly, not through a SOCKS5 proxy" in w for w in socks)


def test_queue_settings_resolve_in_kumomtas_order(tmp_path):
    d = load(tmp_path).delivery
    # [queue.default] max_age 24 hours; [queue.'gmail.com'] 22 hours, retry 17 mins;
    # [tenant.'mytenant'] pool-2 and 10 hours, over the domain's.
    mine = d.queue_config("mytenant", None, "gmail.com")
    assert (mine.max_age_s, mine.retry_interval_s, mine.egress_pool) == (10 * HOURS, 17 * 60, "pool-2")
    default_tenant = d.queue_config("default-tenant", None, "gmail.com")
    assert (default_tenant.max_age_s, default_tenant.egress_pool) == (22 * HOURS, "pool-1")
    assert d.queue_config(None, None, "example.org").max_age_s == 24 * HOURS
    # [queue.'my.own.hostname'] routing_domain = '[10.0.0.1]': relayed to that address
    assert d.queue_config(None, None, "my.own.hostname").routing_domain == "[10.0.0.1]"
    assert d.queue_config(None, None, "gmail.com").routing_domain is None


def test_tenancy_headers_and_default_tenant(tmp_path):
    t = load(tmp_path).tenancy
    assert (t.tenant_header, t.campaign_header, t.default_tenant) == ("X-Tenant", "X-Campaign", "default-tenant")
    assert t.remove_headers is True and t.remove_campaign_header is True


def test_a_message_without_a_tenant_header_gets_the_default_tenant(tmp_path):
    from trimta.core.message import Reception
    from trimta.services.acceptance import Submission, prepare

    tenancy = load(tmp_path).tenancy
    data = b"From: a@example.com\r\nX-Campaign: spring\r\nSubject: x\r\n\r\nbody\r\n"
    prepared = prepare(Submission(sender="a@example.com", recipients=["b@gmail.com"], data=data,
                                  reception=Reception(peer_address="127.0.0.1")),
                       tenancy=tenancy, hostname="mx.test", now=1.0)
    (message,) = prepared.messages
    assert (message.tenant, message.campaign) == ("default-tenant", "spring")
    assert b"X-Campaign" not in prepared.data  # remove_campaign_header = true


async def test_tenant_max_age_and_pool_hold_in_delivery(tmp_path, autojump_clock):
    # A receiver that always defers: mytenant's mail expires after 10 hours, retried every
    # 17 minutes (doubling), from ip-2 and ip-3; the default tenant's after 22 from ip-1.
    d = load(tmp_path).delivery
    h = DeliveryHarness(config=d, paths=_loopback_allowed())
    h.resolver.add_domain("gmail.com", "127.0.0.20")
    mx = h.network.add_receiver("127.0.0.20", 25, deferring("rcpt_to"))
    with trio.fail_after(10**6):
        async with h.running():
            start = trio.current_time()
            await h.inject(recipients=["a@gmail.com", "b@gmail.com", "c@gmail.com"], tenant="mytenant")
            await h.inject(recipients=["d@gmail.com"], tenant="default-tenant")
            await h.wait_until_settled()
    expired = {r["recipient"]: r for r in h.records("Expiration")}
    assert set(expired) == {"a@gmail.com", "b@gmail.com", "c@gmail.com", "d@gmail.com"}
    first_retry = [c.opened_at - start for c in mx.connections if c.source_address == "10.0.0.1"][1]
    assert 17 * 60 * 0.9 <= first_retry <= 17 * 60
    by_source = {}
    for c in mx.connections:
        by_source.setdefault(c.source_address, 0)
        by_source[c.source_address] += 1
    assert set(by_source) == {"10.0.0.1", "10.0.0.2", "10.0.0.3"}
    mytenant_ends = [c.closed_at - start for c in mx.connections if c.source_address != "10.0.0.1"]
    default_ends = [c.closed_at - start for c in mx.connections if c.source_address == "10.0.0.1"]
    assert max(mytenant_ends) <= 10 * HOURS + 60
    assert 10 * HOURS < max(default_ends) <= 22 * HOURS + 60


def _loopback_allowed():
    from trimta.core.egress_options import StaticPathProvider
    from trimta.core.egress import EgressPathConfig

    return StaticPathProvider(EgressPathConfig(prohibited_hosts=()))


@pytest.mark.parametrize(("trimta_toml", "message"), [
    ('[sources.ip-1]\nsource_address = "10.0.0.9"\n', "source 'ip-1' is defined twice: here and in"),
    ('[sources.x]\n[pools.pool-2]\nentries = [{ name = "x" }]\n', "pool 'pool-2' is defined twice"),
    ('[tenants.mytenant]\nmax_age = "1d"\n', "max_age is set twice: here and in"),
    ('[queues]\nmax_age = "1d"\n', "max_age is set twice"),
    ('[queues.domains."gmail.com"]\nretry_interval = "5m"\n', "retry_interval is set twice"),
    ('[tenancy]\ntenant_header = "X-Customer"\n', "set twice: here and in"),
])
def test_saying_one_thing_in_both_places_is_an_error_naming_both(tmp_path, trimta_toml, message):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, trimta_toml)
    text = str(info.value)
    assert message in text
    assert str(tmp_path / "trimta.toml") in text and (str(tmp_path / "queues.toml") in text
                                                       or str(tmp_path / "sources.toml") in text)


def test_saying_different_things_in_both_places_works(tmp_path):
    config = load(tmp_path, '[sources.ip-9]\nsource_address = "10.0.0.9"\n[tenants.mytenant]\nretry_interval = "5m"\n'
                            '[pools.p9]\nentries = [{ name = "ip-9" }, { name = "ip-1" }]\n')
    d = config.delivery
    assert d.pools["p9"].entries == (("ip-9", 1), ("ip-1", 1))
    mine = d.queue_config("mytenant", None, "gmail.com")
    assert (mine.retry_interval_s, mine.max_age_s) == (300, 10 * HOURS)


def test_a_mistake_in_a_helper_file_names_that_file_and_key(tmp_path):
    path = config_dir(tmp_path, KUMOMTA, **EXAMPLES)
    (tmp_path / "queues.toml").write_text('[tenant.acme]\negress_pool = "pool-9"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{tmp_path / 'queues.toml'}: tenant.acme.egress_pool: no pool named 'pool-9'")


def test_listener_domains_lookup_as_kumomta(tmp_path):
    rules = load(tmp_path).listeners[0].listener_domains
    assert rules.lookup("example.com", "127.0.0.1:2525").relay_to is True
    assert rules.lookup("a.b.example.com", "127.0.0.1:2525").relay_to is True  # "*.example.com"
    assert rules.lookup("www.example.com", "127.0.0.1:2525").relay_to is False  # excluded explicitly
    # ["*"]: relay_to = false, log_oob = log_arf = true ("LogThenRelay")
    relay = ReportHandling.LOG_THEN_RELAY
    assert rules.lookup("gmail.com", "127.0.0.1:2525") == ListenerDomain(log_oob=relay, log_arf=relay)
    assert rules.report_handling("bounce.example.com", "127.0.0.1:2525") == (relay, ReportHandling.IGNORE)
    assert rules.report_handling("fbl.example.com", "127.0.0.1:2525") == (ReportHandling.IGNORE, relay)
    assert rules.report_handling("a.b.example.com", "127.0.0.1:2525") == (relay, relay)
    assert rules.report_handling("www.example.com", "127.0.0.1:2525") == (ReportHandling.IGNORE, ReportHandling.IGNORE)
    # [listener."127.0.0.1:25"."*.example.com"] log_oob = false, on that listener only
    assert rules.report_handling("a.b.example.com", "127.0.0.1:25") == (ReportHandling.IGNORE, ReportHandling.IGNORE)
    ok = dict(listener="127.0.0.1:2525", authz_id=None)
    assert rules.relay_allowed(peer="192.0.2.1", sender_domain="x.example", recipient_domain="example.com", **ok)
    assert not rules.relay_allowed(peer="192.0.2.1", sender_domain="x.example", recipient_domain="gmail.com", **ok)
    assert rules.relay_allowed(peer="10.0.0.7", sender_domain="send.example.com", recipient_domain="gmail.com",
                               **ok)
    assert not rules.relay_allowed(peer="10.0.1.7", sender_domain="send.example.com", recipient_domain="gmail.com",
                                   **ok)


async def test_the_listener_relays_what_the_listener_domains_allow(tmp_path):
    """The docs' example: ``relay_to`` decides at RCPT; a domain whose entry logs reports
    (``"*"`` does: ``log_oob = log_arf = true``) takes any recipient there and judges the
    message once it is in: a report it logs is logged, then relayed (``true`` is
    ``"LogThenRelay"``); anything else is refused then, as KumoMTA does."""
    import json

    from tests import report_samples as samples
    from trimta.adapters.logfile import JsonLinesWriter
    from trimta.adapters.spool import Spool
    from trimta.adapters.spool_sqlite import SqliteStorage
    from trimta.services.acceptance import Acceptor
    from trimta.services.logs import LogSink
    from trimta.services.smtp_listener import SmtpListener

    config = load(tmp_path, '[[listener]]\nlisten = "127.0.0.1:0"\nrelay_hosts = []\n')
    spool = Spool(SqliteStorage(tmp_path / "spool"))
    logs = LogSink(JsonLinesWriter(tmp_path / "logs", max_file_size_bytes=10**9, max_segment_duration_s=3600))
    listener = SmtpListener(config.listeners[0], acceptor=Acceptor(spool=spool, logs=logs, tenancy=config.tenancy,
                                                                   hostname="mx.test"), logs=logs)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(spool.run)
            await nursery.start(logs.run)
            listeners = await nursery.start(partial(trio.serve_tcp, listener.handle, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            buffer = bytearray()

            async def say(line: bytes) -> bytes:
                if line:
                    await stream.send_all(line + b"\r\n")
                while b"\r\n" not in buffer or not _complete(buffer):
                    buffer.extend(await stream.receive_some(4096))
                reply = bytes(buffer)
                buffer.clear()
                return reply

            async def send(recipient: str, data: bytes) -> bytes:
                assert (await say(b"MAIL FROM:<>")).startswith(b"250")
                assert (await say(f"RCPT TO:<{recipient}>".encode())).startswith(b"250")
                assert (await say(b"DATA")).startswith(b"354")
                return await say(data + b".")

            await say(b"")
            await say(b"EHLO client.test")
            await say(b"MAIL FROM:<a@elsewhere.example>")
            assert (await say(b"RCPT TO:<u@example.com>")).startswith(b"250")  # relay_to = true
            assert (await say(b"RCPT TO:<u@www.example.com>")).startswith(b"5")  # relay_to = log_* = false
            assert (await say(b"RCPT TO:<u@gmail.com>")).startswith(b"250")  # "*" logs reports
            await say(b"RSET")
            # Not a report: refused once in, as relaying to gmail.com is not allowed.
            assert (await send("u@gmail.com", samples.PLAIN)).startswith(b"550 5.7.1 relaying not permitted")
            # bounce.example.com logs OOB reports, fbl.example.com ARF reports.
            assert (await send("bounces@bounce.example.com", samples.POSTFIX)).startswith(b"250")
            assert (await send("fbl@fbl.example.com", samples.RFC5965)).startswith(b"250")
            # A feedback report to a domain that logs only OOB reports is an ordinary message there.
            assert (await send("x@bounce.example.com", samples.RFC5965)).startswith(b"550 5.7.1")
            await say(b"QUIT")
            await stream.aclose()
            await logs.flush()
            nursery.cancel_scope.cancel()
    records = [json.loads(line) for f in sorted((tmp_path / "logs").iterdir()) for line in f.read_text().splitlines()]
    by = {(r["type"], r["recipient"]): r for r in records}
    assert sorted(by) == [
        ("Feedback", "fbl@fbl.example.com"), ("OOB", "Nobody@remote.example"),
        ("Reception", "bounces@bounce.example.com"), ("Reception", "fbl@fbl.example.com"),
        ("Rejection", ""), ("Rejection", "u@www.example.com"),
    ]
    assert [(r["response"]["content"], r["response"]["command"]) for r in records if r["recipient"] == ""] == [
        ("relaying not permitted", "DATA")] * 2
    oob = by["OOB", "Nobody@remote.example"]
    # KumoMTA's fields are the DSN's own (its queue, from queues.toml's default_tenant);
    # trimta's tenant and campaign are those of the bounced message.
    assert oob["sender"] == "bounces@bounce.example.com" and oob["queue"] == "default-tenant@bounce.example.com"
    assert (oob["tenant"], oob["campaign"], oob["original_id"]) == ("acme", "december-news", samples.TRIMTA_ID)
    assert oob["response"]["code"] == 550 and oob["bounce_classification"] == "InvalidRecipient"
    assert by["Feedback", "fbl@fbl.example.com"]["feedback_report"]["feedback_type"] == "abuse"
    assert by["Feedback", "fbl@fbl.example.com"]["id"] == by["Reception", "fbl@fbl.example.com"]["id"]


def _complete(buffer: bytearray) -> bool:
    lines = bytes(buffer).split(b"\r\n")
    return any(len(line) >= 4 and line[3:4] == b" " for line in lines)
