"""The PROXY protocol v2 header an HAProxy egress connection opens with (proxy-protocol.txt 2.2)."""

from __future__ import annotations

import pytest

from trimta.protocol.proxy_header import parse_proxy_v2_header, proxy_v2_header


def test_ipv4_header_is_the_signature_the_proxy_command_and_the_addresses():
    header = proxy_v2_header("10.0.0.1", "192.0.2.25", 25)
    assert header == (b"\r\n\r\n\x00\r\nQUIT\n"  # the signature
                      b"\x21"  # version 2, PROXY
                      b"\x11"  # TCP over IPv4
                      b"\x00\x0c"  # 12 octets of addresses
                      b"\x0a\x00\x00\x01" b"\xc0\x00\x02\x19"  # source, destination
                      b"\x00\x00" b"\x00\x19")  # source port 0 (the proxy's choice), destination port 25


def test_ipv6_header():
    header = proxy_v2_header("2001:db8::1", "2001:db8::25", 2525)
    assert header[12:16] == b"\x21\x21\x00\x24"  # TCP over IPv6, 36 octets
    assert header[16:32] == bytes.fromhex("20010db8000000000000000000000001")
    assert header[32:48] == bytes.fromhex("20010db8000000000000000000000025")
    assert header[48:] == b"\x00\x00\x09\xdd"


@pytest.mark.parametrize(("source", "destination"), [("10.0.0.1", "2001:db8::25"), ("2001:db8::1", "192.0.2.25"),
                                                     ("proxy.example", "192.0.2.25")])
def test_addresses_of_two_families_or_a_name_are_refused(source, destination):
    with pytest.raises(ValueError):
        proxy_v2_header(source, destination, 25)


@pytest.mark.parametrize(("source", "destination", "port"), [("10.0.0.1", "192.0.2.25", 25),
                                                             ("2001:db8::1", "2001:db8::25", 2525)])
def test_a_header_reads_back(source, destination, port):
    assert parse_proxy_v2_header(proxy_v2_header(source, destination, port) + b"EHLO x\r\n") == (
        source, destination, port)


@pytest.mark.parametrize("data", [b"EHLO mx.example.com\r\n", b"\r\n\r\n\x00\r\nQUIT\n\x21", b"",
                                  proxy_v2_header("10.0.0.1", "192.0.2.25", 25)[:20]])
def test_anything_else_is_no_header(data):
    assert parse_proxy_v2_header(data) is None
