"""`trimta trace-smtp-server` against a daemon whose listener runs over reception worker
processes (``workers = 2``): every session is traced, whichever process took it."""

from __future__ import annotations

import smtplib
import subprocess
import sys


def test_trace_smtp_server_sees_the_sessions_of_reception_workers(make_daemon):
    daemon = make_daemon(extra_listener="workers = 2").start()
    tracer = subprocess.Popen([sys.executable, "-m", "trimta", "--endpoint", f"http://127.0.0.1:{daemon.http_port}",
                               "trace-smtp-server", "--source", "127.0.0.1"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert tracer.stderr.readline() == "tracing incoming SMTP sessions (Ctrl-C to stop)\n"
        # The kernel spreads them over the daemon's listening socket and the worker's two: all
        # twelve reach the daemon's one with a chance of (1/3)^12, and then this test would
        # not have seen a worker's session (tests/services/test_reception_workers.py counts them).
        for n in range(12):
            with smtplib.SMTP(daemon.host, daemon.port, timeout=20) as smtp:
                smtp.sendmail("a@client.example", [f"r{n}@example.org"], b"Subject: in\r\n\r\nHello\r\n")
        lines: list[str] = []
        while sum(line.endswith("=== Closed") for line in lines) < 12:
            line = tracer.stdout.readline()
            assert line, tracer.stderr.read()
            lines.append(line.rstrip("\n"))
    finally:
        tracer.kill()
        tracer.communicate(timeout=10)
    tags = {line.split()[0] for line in lines}
    assert len(tags) == 12  # every session, whichever process took it
    assert all(any(f"-> rcpt TO:<r{n}@example.org>" in line for line in lines) for n in range(12))
