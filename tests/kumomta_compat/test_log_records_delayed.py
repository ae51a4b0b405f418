"""The record kind the real daemon writes only when it meets a bug (``Delayed``), validated like the others.

A backend stream that raises on the first connection's first send (the harness's
`FirstConnectionBuggy`) makes the delivery engine write a ``Delayed`` record and send the
message back to its scheduled queue; that record, as the log sink writes it, must parse
as KumoMTA's ``JsonLogRecord`` too (tests/kumomta_compat/log_record_schema.py).
"""

from __future__ import annotations

import jsonschema
import trio

from tests.kumomta_compat.log_record_schema import SCHEMA, TRIMTA_SCHEMA
from trimta.adapters.logfile import JsonLinesWriter
from trimta.services.logs import LogSink
from trimta.testing.harness import DeliveryHarness
from trimta.testing.network import FirstConnectionBuggy, accepting


async def test_a_delayed_record_and_the_delivery_after_it_validate(autojump_clock, tmp_path):
    h = DeliveryHarness(config="[egress.default]\nprohibited_hosts = []\n",
                        network=FirstConnectionBuggy(on="send", fail_at=1))
    h.resolver.add_domain("example.net", "127.0.0.10")
    h.network.add_receiver("127.0.0.10", 25, accepting())
    with trio.fail_after(7200):
        async with h.running():
            await h.inject(recipients=["a@example.net"])
            await trio.sleep(3600)
    sink = LogSink(JsonLinesWriter(tmp_path, max_file_size_bytes=10**6, max_segment_duration_s=3600))
    kinds = []
    for record in h.records():
        sink.emit(record)  # what the daemon's sink adds: the node id, the meta [logs] asks for
        jsonschema.validate(record, SCHEMA)
        jsonschema.validate(record, TRIMTA_SCHEMA)
        kinds.append(record["type"])
    assert "Delayed" in kinds and "Delivery" in kinds
    (delayed,) = h.records("Delayed")
    assert delayed["peer_address"] is None and delayed["delivery_protocol"] == "ESMTP"
    assert delayed["site"] == delayed["ready_queue"]
