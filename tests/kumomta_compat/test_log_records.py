"""The records of a real daemon, read as KumoMTA's log consumers read them.

One `trimta serve` (zstd segments, ``[logs] headers`` and ``meta``) receives mail over
SMTP and relays it through dnsmasq's MX records to aiosmtpd receivers on loopback: one
plain, one that requires STARTTLS, one that defers once, one that refuses; a domain
whose MX does not answer expires, another is held and then bounced by an operator, and
a message too big is refused. Every record kind that makes is validated against
KumoMTA's ``JsonLogRecord`` (log_record_schema.py), then a consumer reads the segments
the way KumoMTA's ``kumo.jsonl`` tailer does, with a checkpoint, across a restart.
"""

from __future__ import annotations

import json
import smtplib
import ssl
import threading
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import jsonschema
import pytest
from aiosmtpd.controller import Controller

from tests.dnsmasq import Dnsmasq
from tests.interop.conftest import Daemon, free_port, tls_files  # noqa: F401 (tls_files: a fixture)
from tests.kumomta_compat.kumo_tailer import KumoStyleTailer
from tests.kumomta_compat.log_record_schema import PREDEFINED_BOUNCE_CLASSES, SCHEMA, TRIMTA_SCHEMA

ZONE = [
    "--mx-host=plain.test,mx.plain.test,10", "--host-record=mx.plain.test,127.0.0.31",
    "--mx-host=tls.test,mx.tls.test,10", "--host-record=mx.tls.test,127.0.0.32",
    "--mx-host=defer.test,mx.defer.test,10", "--host-record=mx.defer.test,127.0.0.33",
    "--mx-host=reject.test,mx.reject.test,10", "--host-record=mx.reject.test,127.0.0.34",
    # Nothing listens there: connections are refused.
    "--mx-host=expire.test,mx.expire.test,10", "--host-record=mx.expire.test,127.0.0.35",
    "--mx-host=held.test,mx.held.test,10", "--host-record=mx.held.test,127.0.0.35",
]
SUBJECT = "=?utf-8?q?Gr=C3=BC=C3=9Fe?= from the tests"
KINDS = {"Reception", "Delivery", "TransientFailure", "Bounce", "Expiration", "AdminRebind", "AdminBounce",
         "Rejection"}


class Receiver:
    """An aiosmtpd handler answering RCPT as scripted (then 250)."""

    def __init__(self, *rcpt_replies: str) -> None:
        self.rcpt_replies = list(rcpt_replies)
        self.lock = threading.Lock()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        with self.lock:
            if self.rcpt_replies:
                return self.rcpt_replies.pop(0)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        return "250 2.0.0 Message accepted"


def read_records(logs: Path) -> list[dict]:
    """Every whole record in the segments now (one pass, following nothing)."""
    return list(KumoStyleTailer(logs, poll_s=0.01).records(until=time.monotonic() + 0.3))


def wait_for(predicate, what: str, timeout: float = 90.0, logs: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    seen = Counter((r["type"], r["recipient"]) for r in read_records(logs)) if logs else ""
    raise AssertionError(f"timed out waiting for {what}; records: {seen}")


def post(d: Daemon, path: str, body: dict) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{d.http_port}{path}", method="POST",
                                     data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=20) as answer:
        return json.load(answer)


def send(d: Daemon, recipients: list[str], body: str = "hello", **headers: str) -> None:
    head = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    with smtplib.SMTP(d.host, d.port, timeout=20) as client:
        client.sendmail("sender@example.com", recipients, f"Subject: {SUBJECT}\r\n{head}\r\n{body}\r\n")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, tls_files):
    """The daemon after all that traffic, stopped: (the daemon, its records, its node id)."""
    directory = tmp_path_factory.mktemp("kumo-logs")
    (directory / "dnsmasq").mkdir()
    dns = Dnsmasq(directory / "dnsmasq", ZONE)
    dns.start()
    cert, key = tls_files
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(str(cert), str(key))
    mx_port = free_port("127.0.0.31")
    controllers = [
        Controller(Receiver(), hostname="127.0.0.31", port=mx_port),
        Controller(Receiver(), hostname="127.0.0.32", port=mx_port, tls_context=tls, require_starttls=True),
        Controller(Receiver("451 4.3.0 Try again later"), hostname="127.0.0.33", port=mx_port),
        Controller(Receiver(*["550 5.1.1 No such user here"] * 5), hostname="127.0.0.34", port=mx_port),
    ]
    for c in controllers:
        c.start()
    d = Daemon(
        directory=directory / "daemon", port=free_port(),
        dns=f'nameservers = ["{dns.nameserver}"]\ntimeout = "2s"',
        # Two processes: Reception records encoded in a reception worker carry the same fields.
        extra_listener=f'max_message_size = "20KB"\nworkers = 2\n'
                       f'tls_certificate = "{cert}"\ntls_private_key = "{key}"\n',
        extra_config=f"""
[queues]
retry_interval = "1s"
[queues.domains."expire.test"]
max_age = "3s"
[queues.domains."held.test"]
retry_interval = "1h"
[egress.default]
smtp_port = {mx_port}
prohibited_hosts = []
enable_tls = "Disabled"
idle_timeout = "2s"
[egress.domains."tls.test"]
enable_tls = "RequiredInsecure"
""",
    )
    d.config_path.write_text(d.config_path.read_text().replace(
        "[logs]\n",
        '[logs]\ncompression = "zstd"\nheaders = ["subject", "X-Campaign-*"]\nmeta = ["tenant", "received_*", "x_*"]\n'))
    logs = d.directory / "logs"
    try:
        d.start()
        send(d, ["ann@plain.test", "bob@tls.test"], X_Tenant="acme", X_Campaign_Id="spring-1",
             X_Campaign_Note="first")
        send(d, ["cid@defer.test", "dan@reject.test", "eve@expire.test", "fay@held.test", "ida@held.test"])
        with smtplib.SMTP(d.host, d.port, timeout=20) as client:  # received over STARTTLS
            trusting = ssl.create_default_context(cafile=str(cert))
            trusting.check_hostname = False  # the test certificate names localhost, we connect to 127.0.0.1
            client.starttls(context=trusting)
            client.sendmail("sender@example.com", ["joe@plain.test"], "Subject: over TLS\r\n\r\nhi\r\n")
        with smtplib.SMTP(d.host, d.port, timeout=20) as client:
            # Without SIZE= (sendmail would send it, and be refused at MAIL): refused after the data.
            client.ehlo()
            client.mail("sender@example.com")
            client.rcpt("gus@plain.test")
            code, _ = client.data(f"Subject: big\r\n\r\n{'x' * 30_000}\r\n")
            assert code == 552
        wait_for(lambda: {r["recipient"] for r in read_records(logs) if r["type"] == "TransientFailure"}
                 >= {"fay@held.test", "ida@held.test"}, "the held messages' first attempts")
        rebound = post(d, "/api/admin/rebind/v1", {"domain": "held.test", "data": {"tenant": "globex", "x_batch": "7"},
                                                   "reason": "booked under the wrong tenant"})
        assert rebound["rebound"] == 2
        assert post(d, "/api/admin/bounce/v1", {"domain": "held.test", "reason": "held too long"})["total_bounced"] == 2

        def complete() -> bool:
            now = read_records(logs)
            return {r["type"] for r in now} >= KINDS and sum(r["type"] == "Delivery" for r in now) == 4

        wait_for(complete, "every kind of record", logs=logs)
        assert d.stop() == 0
        nodeid = (d.spool_path / "node_id").read_text().strip()
        yield d, read_records(logs), nodeid
    finally:
        d.stop()
        for c in controllers:
            c.stop()
        dns.stop()


def test_every_record_kind_validates_against_kumomtas_jsonlogrecord(daemon):
    _, records, _ = daemon
    assert {r["type"] for r in records} >= KINDS
    for record in records:
        jsonschema.validate(record, SCHEMA)  # what KumoMTA's serde parses
        jsonschema.validate(record, TRIMTA_SCHEMA)  # and both RFC 3339 times, always
        assert record["bounce_classification"] in PREDEFINED_BOUNCE_CLASSES


def test_the_fields_say_what_happened(daemon):
    _, records, nodeid = daemon
    assert {r["nodeid"] for r in records} == {nodeid}  # one node, its id kept in the spool
    assert str(uuid.UUID(nodeid)) == nodeid
    by = {(r["type"], r["recipient"]): r for r in records}

    received = by["Reception", "ann@plain.test"]
    assert received["site"] == "" and received["delivery_protocol"] is None
    assert received["headers"] == {"Subject": "Grüße from the tests", "X-Campaign-Id": "spring-1",
                                   "X-Campaign-Note": "first"}
    assert received["meta"] == {"tenant": "acme", "received_from": "127.0.0.1",
                                "received_via": received["meta"]["received_via"]}
    # One SMTP session: one session_id for both recipients' Reception records.
    assert received["session_id"] == by["Reception", "bob@tls.test"]["session_id"]
    assert received["session_id"] != by["Reception", "cid@defer.test"]["session_id"]

    assert "tls_cipher" not in received  # a plaintext session
    over_tls = by["Reception", "joe@plain.test"]
    assert over_tls["reception_protocol"] == "ESMTPS" and over_tls["tls_protocol_version"].startswith("TLSv1.")
    assert over_tls["tls_cipher"] and "tls_peer_subject_name" not in over_tls  # the client sent no certificate

    plain = by["Delivery", "ann@plain.test"]
    assert plain["site"] == plain["ready_queue"] and plain["site"].endswith("->mx.plain.test@smtp_client")
    assert plain["delivery_protocol"] == "ESMTP"
    assert plain["source_address"]["address"].startswith("127.")
    assert plain["headers"] == received["headers"] and plain["meta"]["tenant"] == "acme"
    assert "tls_cipher" not in plain and plain["peer_address"]["addr"] == "127.0.0.31"

    secure = by["Delivery", "bob@tls.test"]
    assert secure["tls_protocol_version"].startswith("TLSv1.")
    assert secure["tls_cipher"] and secure["tls_peer_subject_name"] == ["CN=localhost"]
    assert secure["session_id"] != plain["session_id"]

    deferred = by["TransientFailure", "cid@defer.test"]
    assert deferred["bounce_classification"] == "TransientFailure" and deferred["response"]["code"] == 451
    assert uuid.UUID(deferred["session_id"])  # refused at RCPT: within a session
    # A connection that was refused has no session, and no peer to name.
    refused = next(r for r in records if r["type"] == "TransientFailure" and r["recipient"] == "eve@expire.test")
    assert "session_id" not in refused and refused["peer_address"] is None
    assert by["Bounce", "dan@reject.test"]["bounce_classification"] == "InvalidRecipient"
    # KumoMTA classifies expirations: 5.4.7 is MessageExpired.
    expired = by["Expiration", "eve@expire.test"]
    assert expired["bounce_classification"] == "MessageExpired" and expired["response"]["code"] == 551
    # Meta is read as each record is written: the rebind's new tenant and its meta show.
    assert "tenant" not in by["Reception", "fay@held.test"]["meta"]  # none at reception: null, left out
    rebind = by["AdminRebind", "fay@held.test"]
    assert rebind["meta"]["tenant"] == "globex" and rebind["meta"]["x_batch"] == "7"
    bounced = by["AdminBounce", "fay@held.test"]
    assert bounced["response"]["content"].endswith("held too long") and bounced["meta"]["x_batch"] == "7"

    (rejection,) = [r for r in records if r["type"] == "Rejection"]
    assert rejection["response"]["code"] == 552 and rejection["recipient"] == ""
    assert rejection["meta"]["received_from"] == "127.0.0.1"
    assert rejection["session_id"] != received["session_id"]


def test_a_kumo_jsonl_style_consumer_processes_the_logs_across_a_restart(daemon):
    d, records, _ = daemon
    logs = d.directory / "logs"
    # The consumer of KumoMTA's docs: outcomes by classification, in batches of 4, each
    # committed once processed; Reception and Rejection records filtered out.
    wanted = {"Delivery", "TransientFailure", "Bounce", "Expiration", "AdminBounce"}

    def consume(crash_at: int | None = None) -> list[Counter]:
        tailer = KumoStyleTailer(logs, checkpoint_name="outcomes", max_batch_size=4,
                                 record_filter=lambda r: r["type"] in wanted)
        batches = []
        for n, batch in enumerate(tailer.batches(until=time.monotonic() + 1.0)):
            seen: Counter = Counter()
            for record in batch.records:
                jsonschema.validate(record, SCHEMA)
                seen[record["type"], record["bounce_classification"]] += 1
            batches.append(seen)
            if n == crash_at:
                return batches  # dies before committing this batch
            batch.commit()
        return batches

    expected = Counter((r["type"], r["bounce_classification"]) for r in records if r["type"] in wanted)
    assert sum(expected.values()) > 8
    first = consume(crash_at=1)  # commits one batch, reads a second and dies
    assert [sum(b.values()) for b in first] == [4, 4]
    checkpoint = json.loads((logs / ".outcomes").read_text())
    assert checkpoint["file"].endswith(".zst") and checkpoint["line"] > 0
    rest = consume()  # from the checkpoint: the uncommitted batch again, then the others
    assert rest[0] == first[1]
    assert sum(rest, Counter()) == expected - first[0]
    assert sum(consume(), Counter()) == Counter()  # all committed: nothing is read twice


def test_the_consumer_follows_a_live_daemon(daemon):
    """Records of a running daemon reach the consumer from the segment being written."""
    d, _, nodeid = daemon
    d.start()  # the same spool: the same node id
    try:
        send(d, ["hal@plain.test"])
        tailer = KumoStyleTailer(d.directory / "logs", checkpoint_name="live",
                                 record_filter=lambda r: r["type"] == "Delivery")
        found: list[dict] = []
        deadline = time.monotonic() + 60
        while not found and time.monotonic() < deadline:
            for batch in tailer.batches(until=time.monotonic() + 1.0):
                found += [r for r in batch.records if r["recipient"] == "hal@plain.test"]
                batch.commit()
        (delivery,) = found
        assert delivery["nodeid"] == nodeid
        jsonschema.validate(delivery, TRIMTA_SCHEMA)
    finally:
        d.stop()
