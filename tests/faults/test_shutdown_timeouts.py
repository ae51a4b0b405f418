"""Client timeouts keep running during shutdown's grace period.

An idle client must still be cut off at `client_timeout` (421 4.4.2) while the daemon
gives in-flight sessions their grace to finish: were the timeout watch cancelled first,
an idle client would hold the shutdown for the whole grace period.
"""

from __future__ import annotations

import signal
import socket


from .conftest import record_fault

def test_an_idle_client_is_timed_out_during_the_grace_period(make_daemon):
    daemon = make_daemon(extra_listener='client_timeout = "2s"\n').start()
    with socket.create_connection((daemon.host, daemon.port), timeout=60) as idle:
        assert idle.recv(512).startswith(b"220 ")
        idle.sendall(b"EHLO idle.example\r\n")
        assert idle.recv(4096).startswith(b"250")
        daemon.proc.send_signal(signal.SIGTERM)
        # Within the grace period (10 s) the idle session's own timeout (2 s) ends it.
        answer = idle.recv(512)
    assert answer.startswith(b"421 4.4.2 "), answer
    assert daemon.proc.wait(timeout=60) == 0
    record_fault("idle client during shutdown's grace period", "timed out at client_timeout (421 4.4.2)",
                 sessions=1, tracebacks=0)
