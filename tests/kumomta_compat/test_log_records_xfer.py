"""XferOut and XferIn records (a transfer between two nodes) validate against KumoMTA's JsonLogRecord.

The two in-memory nodes of tests/services/test_xfer.py move three messages; each
node's records, as its log sink writes them (stamped with that node's id), must parse
as KumoMTA's (tests/kumomta_compat/log_record_schema.py).
"""

from __future__ import annotations

import jsonschema

from tests.kumomta_compat.log_record_schema import SCHEMA, TRIMTA_SCHEMA
from tests.services.test_xfer import Network, Node, run_until
from trimta.adapters.logfile import JsonLinesWriter
from trimta.core.xfer import Selector
from trimta.services.logs import LogSink


async def test_xfer_records_of_both_nodes_validate(autojump_clock, tmp_path):
    net = Network()
    a, b = Node("a", net), Node("b", net)
    for i in range(3):
        await a.queue(i)
    await a.xfers.start(b.url, Selector(tenant="acme"), "Scaling down")
    await run_until(lambda: not a.xfers.statistics(), a, b)
    for node, kind in ((a, "XferOut"), (b, "XferIn")):
        sink = LogSink(JsonLinesWriter(tmp_path / node.name, max_file_size_bytes=10**6, max_segment_duration_s=3600))
        written = node.logs.of(kind)
        assert len(written) == 3
        for record in written:
            sink.emit(record)  # the node id, the meta [logs] asks for: what the daemon's sink adds
            jsonschema.validate(record, SCHEMA)
            jsonschema.validate(record, TRIMTA_SCHEMA)
            assert record["nodeid"] == sink.nodeid
