"""Live tracing of outbound SMTP sessions: KumoMTA's trace-smtp-client.

`TracingNetwork` wraps the delivery engine's network: while someone is tracing, each
connection it opens is a `TraceSession` whose bytes, both ways, become events for the
subscribers whose `TraceFilter` admits the session. Nobody tracing: connections are
not wrapped at all, so tracing costs nothing until it is used.

A filter is an allow-list per property, as in KumoMTA: a property it names that the
session has must be one of the values given; a property the session does not have (yet)
does not exclude it. What a session has: at connection, the egress source (its name and
address), the MX host and address; once a recipient is sent (``RCPT TO``), that
message's sender, recipient, domain, tenant, campaign, routing domain and pool (found
among the messages in flight). A session that a newly known property excludes sends
no more events.

Incoming sessions (`TraceHub.server_session`) are traced by the listener that serves
them; their one property is the client's address (``source``). A reception worker
process traces its sessions on a `RelayedTraceHub`, switched on by the daemon while
anyone traces, whose events travel to the daemon's hub with the session's properties
(`TraceHub.deliver`): the filters are applied there, as for the daemon's own sessions.

Each subscriber has a bounded buffer; events that do not fit are dropped and counted
(the subscriber is told how many), so a slow reader never slows delivery.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import trio

from trimta.adapters.network import NetworkBackend, NetworkStream
from trimta.adapters.tls_info import TlsDetails
from trimta.protocol.proxy_header import parse_proxy_v2_header

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

BUFFER_EVENTS = 1024
RELAY_READY_S = 2.0  # how long a new subscription waits for reception workers to start tracing
RELAY_POLL_S = 0.01
MAX_DATA_CHARS = 4096  # of one event's data (a message body is cut, as kcli's --terse would)
_RCPT = re.compile(rb"^RCPT TO:<([^>]*)>", re.IGNORECASE | re.MULTILINE)
_MAIL = re.compile(rb"^MAIL FROM:<([^>]*)>", re.IGNORECASE | re.MULTILINE)

# The properties a filter can name, and those that hold addresses (CIDR lists).
PROPERTIES = ("source", "mx_addr", "mx_host", "domain", "routing_domain", "campaign", "tenant", "egress_pool",
              "egress_source", "mail_from", "rcpt_to", "ready_queue")
ADDRESS_PROPERTIES = ("source", "mx_addr")
_LOWERED = ("mx_host", "domain", "routing_domain")


@dataclass(frozen=True, slots=True)
class TraceFilter:
    """Allowed values per property (none given for a property: any value)."""

    allowed: Mapping[str, frozenset[str]] = field(default_factory=dict)
    networks: Mapping[str, tuple[Network, ...]] = field(default_factory=dict)

    @classmethod
    def parse(cls, values: Mapping[str, list[str]]) -> TraceFilter:
        """From query parameters; ValueError naming the property for a bad CIDR or an unknown one."""
        allowed: dict[str, frozenset[str]] = {}
        networks: dict[str, tuple[Network, ...]] = {}
        for name, given in values.items():
            if name not in PROPERTIES:
                raise ValueError(f"{name}: not a property to trace by; use {', '.join(PROPERTIES)}")
            if name in ADDRESS_PROPERTIES:
                try:
                    networks[name] = tuple(ipaddress.ip_network(v.strip(), strict=False) for v in given)
                except ValueError as exc:
                    raise ValueError(f"{name}: expected an address or a CIDR like 10.0.0.0/8: {exc}") from None
            else:
                allowed[name] = frozenset(v.strip().lower() if name in _LOWERED else v.strip() for v in given)
        return cls(allowed, networks)

    def admits(self, properties: Mapping[str, Any]) -> bool:
        for name, values in self.allowed.items():
            value = properties.get(name)
            if value is None or value == "":
                continue  # not known (yet): it does not exclude the session
            if (str(value).lower() if name in _LOWERED else str(value)) not in values:
                return False
        for name, nets in self.networks.items():
            value = properties.get(name)
            if not value:
                continue
            try:
                address = ipaddress.ip_address(str(value))
            except ValueError:
                return False
            if not any(address in net for net in nets):
                return False
        return True


class Subscriber:
    """One tracer: its filter and the events waiting for it."""

    def __init__(self, hub: TraceHub, trace_filter: TraceFilter, buffer: int) -> None:
        self.hub = hub
        self.filter = trace_filter
        self.send, self.receive = trio.open_memory_channel[dict[str, Any]](buffer)
        self.dropped = 0

    def offer(self, event: dict[str, Any]) -> None:
        try:
            self.send.send_nowait(event)
        except trio.WouldBlock:
            self.dropped += 1

    def close(self) -> None:
        self.hub.unsubscribe(self)
        self.send.close()


class TraceHub:
    """Who is tracing; where sessions send their events."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.subscribers: set[Subscriber] = set()
        self.clock = clock
        # Told True when the first subscriber comes and False when the last leaves
        # (reception workers: they trace their sessions only meanwhile).
        self.watchers: list[Callable[[bool], None]] = []
        # One per group of processes relaying their sessions' events here: True once each
        # of them has said it traces (so a subscriber told "tracing" misses no new session).
        self.relays: list[Callable[[], bool]] = []

    @property
    def tracing(self) -> bool:
        """Whether sessions are to be traced now (someone is subscribed)."""
        return bool(self.subscribers)

    def subscribe(self, trace_filter: TraceFilter, buffer: int = BUFFER_EVENTS) -> Subscriber:
        subscriber = Subscriber(self, trace_filter, buffer)
        self.subscribers.add(subscriber)
        if len(self.subscribers) == 1:
            self._tell_watchers(True)
        return subscriber

    async def ready(self, timeout_s: float = RELAY_READY_S) -> bool:
        """Wait (at most `timeout_s`) until every relaying process traces; False if one did not."""
        with trio.move_on_after(timeout_s):
            while not all(relay() for relay in self.relays):
                await trio.sleep(RELAY_POLL_S)
            return True
        return False

    def unsubscribe(self, subscriber: Subscriber) -> None:
        if subscriber in self.subscribers:
            self.subscribers.discard(subscriber)
            if not self.subscribers:
                self._tell_watchers(False)

    def _tell_watchers(self, tracing: bool) -> None:
        for watcher in list(self.watchers):
            watcher(tracing)

    def server_session(self, peer: str, listener: str) -> TraceSession:
        """A traced incoming session (trace-smtp-server): its `Connected` event is sent."""
        session = TraceSession(self, {"source": peer, "listener": listener}, lambda recipient: None)
        self.event(session, "Connected")
        return session

    def event(self, session: TraceSession, kind: str, data: str | None = None) -> None:
        if not self.tracing:
            return
        event: dict[str, Any] = {
            "session_id": session.id,
            "when": datetime.fromtimestamp(self.clock(), timezone.utc).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "kind": kind,
        }
        if data is not None:
            event["data"] = data if len(data) <= MAX_DATA_CHARS else data[:MAX_DATA_CHARS] + "..."
        if kind in ("Connected", "Message", "Proxy"):
            event["session"] = dict(session.properties)
        self.deliver(session.properties, event)

    def deliver(self, properties: Mapping[str, Any], event: dict[str, Any]) -> None:
        """Offer `event`, of a session with `properties`, to each subscriber admitting it."""
        for subscriber in list(self.subscribers):
            if subscriber.filter.admits(properties):
                subscriber.offer(event)


class RelayedTraceHub(TraceHub):
    """A reception worker's hub: it traces while the daemon says someone does, and hands
    each event, with its session's properties, to `forward` (the daemon's hub delivers it)."""

    def __init__(self, forward: Callable[[Mapping[str, Any], dict[str, Any]], None],
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock)
        self.forward = forward
        self.on = False

    @property
    def tracing(self) -> bool:
        return self.on

    def deliver(self, properties: Mapping[str, Any], event: dict[str, Any]) -> None:
        self.forward(properties, event)


class TraceSession:
    """The properties and events of one traced connection."""

    def __init__(self, hub: TraceHub, properties: dict[str, Any],
                 in_flight: Callable[[str], Mapping[str, Any] | None], hosts: Mapping[str, str] | None = None) -> None:
        self.id = str(uuid.uuid4())
        self.hub = hub
        self.properties = properties
        self.in_flight = in_flight
        self.hosts = hosts or {}  # MX address -> host name, for a session through a proxy
        self.closed = False

    def wrote(self, data: bytes) -> None:
        if "proxy" in self.properties and "mx_addr" not in self.properties:
            header = parse_proxy_v2_header(data)
            if header is not None:  # through HAProxy: the header says which MX host, from which address
                source, destination, port = header
                self.properties.update(mx_addr=destination, mx_host=self.hosts.get(destination), port=port,
                                       proxy_source=source)
                self.hub.event(self, "Proxy", f"PROXY from {source} to {destination}:{port}")
                return
        for match in _MAIL.finditer(data):
            self.properties["mail_from"] = match.group(1).decode("utf-8", "replace")
        recipients = [m.group(1).decode("utf-8", "replace") for m in _RCPT.finditer(data)]
        self.hub.event(self, "Write", data.decode("utf-8", "replace"))
        for recipient in recipients:
            self.properties["rcpt_to"] = recipient
            self.properties["domain"] = recipient.rpartition("@")[2].lower()
            found = self.in_flight(recipient)  # the message being sent: its tenant, campaign, pool, queue
            if found is not None:
                self.properties.update(found)
            self.hub.event(self, "Message")

    def read(self, data: bytes) -> None:
        self.hub.event(self, "Read" if data else "Closed by peer", data.decode("utf-8", "replace") if data else None)


class TracingStream:
    """A `NetworkStream` whose bytes are traced; STARTTLS keeps tracing (the plaintext inside)."""

    def __init__(self, stream: NetworkStream, session: TraceSession) -> None:
        self._stream = stream
        self.session = session

    @property
    def tls_version(self) -> str | None:
        return self._stream.tls_version

    def peer_certificates(self) -> tuple[bytes, ...]:
        return self._stream.peer_certificates()

    @property
    def tls_details(self) -> TlsDetails | None:
        return self._stream.tls_details

    @property
    def local_address(self) -> str | None:
        return self._stream.local_address

    async def receive_some(self, max_bytes: int = 65536) -> bytes:
        data = await self._stream.receive_some(max_bytes)
        self.session.read(data)
        return data

    async def send_all(self, data: bytes) -> None:
        self.session.wrote(data)
        await self._stream.send_all(data)

    async def start_tls(self, context: ssl.SSLContext, server_hostname: str | None) -> NetworkStream:
        try:
            inner = await self._stream.start_tls(context, server_hostname)
        except BaseException as exc:
            self.session.hub.event(self.session, "TLS failed", str(exc) or type(exc).__name__)
            raise
        self.session.hub.event(self.session, "TLS", inner.tls_version)
        return TracingStream(inner, self.session)

    async def aclose(self) -> None:
        if not self.session.closed:
            self.session.closed = True
            self.session.hub.event(self.session, "Closed")
        await self._stream.aclose()


class TracingNetwork:
    """The engine's network for one egress source, tracing its connections while anyone traces."""

    def __init__(self, network: NetworkBackend, hub: TraceHub, *, egress_source: str, hosts: Mapping[str, str],
                 in_flight: Callable[[str], Mapping[str, Any] | None],
                 proxy: tuple[str, int] | None = None) -> None:
        self.network = network
        self.hub = hub
        self.egress_source = egress_source
        self.hosts = hosts
        self.in_flight = in_flight
        self.proxy = proxy  # the source's HAProxy server: connections to it are to an MX host behind it

    async def connect_tcp(self, address: str, port: int, *, source_address: str | None = None,
                          timeout_s: float = 60.0) -> NetworkStream:
        stream = await self.network.connect_tcp(address, port, source_address=source_address, timeout_s=timeout_s)
        if not self.hub.tracing:
            return stream
        if self.proxy == (address, port):  # the MX host is known once the PROXY header names it
            properties: dict[str, Any] = {"source": source_address, "egress_source": self.egress_source,
                                          "proxy": f"{address}:{port}" if ":" not in address else f"[{address}]:{port}"}
        else:
            properties = {"source": source_address, "egress_source": self.egress_source,
                          "mx_host": self.hosts.get(address), "mx_addr": address, "port": port}
        session = TraceSession(self.hub, properties, self.in_flight, self.hosts)
        self.hub.event(session, "Connected")
        return TracingStream(stream, session)
