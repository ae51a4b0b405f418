"""A real `trimta serve` for the KumoMTA compatibility tests that talk to the daemon.

Its DNS server never answers (mail waits in its scheduled queues, nothing is sent off
the machine), every IPv4 address but loopback is a prohibited host (the routing-domain
literals of KumoMTA's examples, like ``[192.168.1.100]``, are never connected to), and
``stall.example`` is routed to ``[127.0.0.41]``, where `StallingListener` accepts
connections and never greets, so a ready queue with an open connection can be inspected;
``ok.example`` to ``[127.0.0.42]`` (same port), for a receiver a test starts there.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import socket
import threading
from pathlib import Path
from typing import Any

from tests.interop.conftest import Daemon, free_port

STALL_ADDRESS = "127.0.0.41"
ACCEPT_ADDRESS = "127.0.0.42"  # ok.example is routed here: a test may run an SMTP receiver on the stall port


def _all_but_loopback() -> list[str]:
    everything = ipaddress.ip_network("0.0.0.0/0")
    return [str(n) for n in everything.address_exclude(ipaddress.ip_network("127.0.0.0/8"))] + ["::/0"]


class StallingListener:
    """Accepts SMTP connections and says nothing (the client waits for its banner)."""

    def __init__(self, host: str = STALL_ADDRESS) -> None:
        self.sock = socket.create_server((host, 0))
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def start_daemon(directory: Path, stall_port: int) -> Daemon:
    prohibited = ", ".join(f'"{n}"' for n in _all_but_loopback())
    daemon = Daemon(directory=directory, port=free_port(), extra_config=f"""
[queues]
retry_interval = "1h"
[queues.domains."stall.example"]
routing_domain = "[{STALL_ADDRESS}]"
[queues.domains."ok.example"]
routing_domain = "[{ACCEPT_ADDRESS}]"
[egress.default]
idle_timeout = "1s"
prohibited_hosts = [{prohibited}]
smtp_port = {stall_port}
enable_tls = "Disabled"
""")
    return daemon.start()


def call(daemon: Daemon, method: str, path: str, body: bytes | Any = None) -> tuple[int, Any]:
    """One request; the answer decoded as JSON when it is JSON, else as text."""
    conn = http.client.HTTPConnection("127.0.0.1", daemon.http_port, timeout=20)
    try:
        payload = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        conn.request(method, path, body=payload, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
        if (response.getheader("Content-Type") or "").startswith("application/json"):
            return response.status, json.loads(data)
        return response.status, data.decode()
    finally:
        conn.close()
