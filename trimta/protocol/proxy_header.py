"""The PROXY protocol's version 2 header (HAProxy's ``proxy-protocol.txt``, section 2.2).

An outbound connection through an HAProxy egress server (KumoMTA's ``ha_proxy_server``)
opens with this header: it tells the proxy, configured with ``accept-proxy`` and
``source 0.0.0.0 usesrc clientip``, which local address to connect from (the source)
and where to connect to (the MX host). After it the stream is plain SMTP.

The header is binary: the 12-octet signature, version 2 with the PROXY command, the
address family and protocol (TCP over IPv4 or IPv6), the length of the addresses, then
source address, destination address, source port, destination port. The source port
is 0: the proxy picks one.
"""

from __future__ import annotations

import ipaddress
import struct

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
VERSION_2_PROXY = 0x21  # version 2 (high nibble), command PROXY (low nibble)
TCP_OVER_IPV4 = 0x11
TCP_OVER_IPV6 = 0x21


def proxy_v2_header(source: str, destination: str, destination_port: int) -> bytes:
    """The header asking the proxy to connect from `source` to `destination`:`destination_port`.

    ValueError when the two addresses are not of one family (a proxy connecting from an
    IPv4 address cannot reach an IPv6 host), or one is not an IP address.
    """
    src = ipaddress.ip_address(source)
    dst = ipaddress.ip_address(destination)
    if src.version != dst.version:
        raise ValueError(f"the proxy source address {source} and the destination {destination} "
                         f"are not of the same address family")
    if not 0 < destination_port < 65536:
        raise ValueError(f"not a port: {destination_port}")
    family = TCP_OVER_IPV4 if src.version == 4 else TCP_OVER_IPV6
    addresses = src.packed + dst.packed + struct.pack("!HH", 0, destination_port)
    return SIGNATURE + bytes((VERSION_2_PROXY, family)) + struct.pack("!H", len(addresses)) + addresses


def parse_proxy_v2_header(data: bytes) -> tuple[str, str, int] | None:
    """(source, destination, destination port) of a PROXY v2 TCP header at the start of
    `data` (what `proxy_v2_header` makes); None when `data` does not start with one."""
    if not data.startswith(SIGNATURE) or len(data) < 16 or data[12] != VERSION_2_PROXY:
        return None
    family = data[13]
    size = 4 if family == TCP_OVER_IPV4 else 16 if family == TCP_OVER_IPV6 else 0
    (length,) = struct.unpack("!H", data[14:16])
    if not size or length < 2 * size + 4 or len(data) < 16 + 2 * size + 4:
        return None
    source = ipaddress.ip_address(data[16:16 + size])
    destination = ipaddress.ip_address(data[16 + size:16 + 2 * size])
    (port,) = struct.unpack("!H", data[16 + 2 * size + 2:16 + 2 * size + 4])
    return str(source), str(destination), port
