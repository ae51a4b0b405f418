"""A validating DNS resolver for DANE tests: unbound on a free loopback port, serving DNSSEC zones of its own.

`Unbound` writes each `Zone` as a zone file, signs the signed ones with ldnsutils
(``ldns-keygen`` for a KSK and a ZSK, ``ldns-signzone``), and builds a signed root
zone that delegates to each of them (with the child's DS record when it is signed).
unbound (``unbound -d``) serves every zone, the root too, as an ``auth-zone`` with
``for-upstream: yes``: it answers from the zone as if an authoritative server had
sent it, so every answer goes through its validator, which starts from one trust
anchor, the root's KSK, as a production resolver does. So:

- a `SIGNED` zone validates: answers carry the AD bit;
- an `UNSIGNED` zone is a delegation without DS: answers come without AD (DNSSEC
  "insecure", provably so);
- a `BOGUS` zone is signed and its DS is in the root, but every signature except the
  DNSKEY set's (or those over its `bogus_types`) is corrupted: unbound answers
  SERVFAIL for those names (DNSSEC "bogus").

unbound treats ``test.`` as a blocked name by default (RFC 6761); ``local-zone:
"test." nodefault`` lifts that. Nothing is asked off this machine: names outside the
zones get the test root's NXDOMAIN.

Missing binaries skip the test, saying why, except under ``CI=true``, where they
fail (scripts/install-system-deps.sh installs the unbound and ldnsutils packages).
"""

from __future__ import annotations

import base64
import enum
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest


class Signing(enum.Enum):
    SIGNED = "signed"
    UNSIGNED = "unsigned"
    BOGUS = "bogus"


@dataclass(frozen=True)
class Zone:
    """A zone: its name (``sec.test``) and its records as zone-file lines relative to it.

    SOA and NS records are added; ``@`` and relative names work as in any zone file.
    """

    name: str
    records: Sequence[str]
    signing: Signing = Signing.SIGNED
    # BOGUS: the record types whose signatures are corrupted (empty: all but DNSKEY's)
    bogus_types: tuple[str, ...] = ()


def _binary(name: str, package: str) -> str:
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )
    if path is None:
        message = f"{name} is not installed (scripts/install-system-deps.sh installs the {package} package)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def _fqdn(name: str) -> str:
    return f"{name}." if name else "."


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (unbound binds both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket() as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free for both UDP and TCP")


def corrupt_signatures(signed: str, types: Sequence[str] = ()) -> str:
    """The signed zone text with the RRSIGs over `types` (none given: all but DNSKEY's) made
    invalid, one bit flipped in each."""
    out = []
    for line in signed.splitlines():
        fields = line.split()
        if len(fields) > 5 and fields[3] == "RRSIG" and fields[4] != "DNSKEY" \
                and (not types or fields[4] in types):
            signature = bytearray(base64.b64decode("".join(fields[12:])))
            signature[len(signature) // 2] ^= 0x01
            line = " ".join([*fields[:12], base64.b64encode(bytes(signature)).decode()])
        out.append(line)
    return "\n".join(out) + "\n"


class Unbound:
    """One validating unbound on 127.0.0.1:`port`, answering for `zones`."""

    def __init__(self, directory: Path, zones: Sequence[Zone]) -> None:
        self.directory = directory
        self.zones = list(zones)
        self.port = free_port()
        self.log_path = directory / "unbound.log"
        self.proc: subprocess.Popen | None = None

    @property
    def nameserver(self) -> str:
        """The ``host:port`` form the ``[dns] nameservers`` setting takes."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        unbound = _binary("unbound", "unbound")
        delegations = []
        for zone in self.zones:
            ds = self._write_zone(zone)
            delegations += [f"{zone.name}. IN NS ns.{zone.name}.", f"ns.{zone.name}. IN A 127.0.0.1"]
            if ds is not None:
                delegations.append(ds)
        root = Zone("", delegations)
        anchor = self._write_zone(root)
        config = self.directory / "unbound.conf"
        lines = [
            "server:",
            f"    interface: 127.0.0.1@{self.port}",
            f"    port: {self.port}",
            "    do-daemonize: no",
            '    username: ""',
            '    chroot: ""',
            f'    directory: "{self.directory}"',
            '    pidfile: ""',
            "    use-syslog: no",
            f'    logfile: "{self.log_path}"',
            "    verbosity: 1",
            "    log-queries: yes",
            "    val-log-level: 2",
            "    num-threads: 1",
            "    do-ip6: no",
            "    access-control: 127.0.0.0/8 allow",
            "    do-not-query-localhost: no",
            '    local-zone: "test." nodefault',
            '    module-config: "validator iterator"',
            # Answers not kept past a test module's changes of mind; bogus ones not for long.
            "    cache-max-ttl: 5",
            "    val-bogus-ttl: 1",
            f'    trust-anchor: "{anchor}"',
        ]
        for zone in [root, *self.zones]:
            lines += [
                "auth-zone:",
                f'    name: "{_fqdn(zone.name)}"',
                f'    zonefile: "{self._zone_file(zone)}"',
                "    for-upstream: yes",
                "    for-downstream: no",
                "    fallback-enabled: no",
            ]
        config.write_text("\n".join(lines) + "\n")
        checked = subprocess.run([_binary("unbound-checkconf", "unbound"), str(config)],
                                 capture_output=True, text=True, timeout=60)
        if checked.returncode != 0:
            raise RuntimeError(f"unbound-checkconf: {checked.stdout}{checked.stderr}")
        stderr_path = self.directory / "unbound.stderr"
        with open(stderr_path, "wb") as stderr:
            self.proc = subprocess.Popen([unbound, "-d", "-c", str(config)],
                                         stdout=subprocess.DEVNULL, stderr=stderr)
        self._wait_until_answering(stderr_path)

    def _zone_file(self, zone: Zone) -> Path:
        plain = self.directory / f"{zone.name or 'root'}.zone"
        return plain if zone.signing is Signing.UNSIGNED else plain.with_suffix(".zone.signed")

    def _write_zone(self, zone: Zone) -> str | None:
        """Write (and sign) the zone's file; the trust anchor (its KSK's DS record) if signed."""
        origin = _fqdn(zone.name)
        plain = self.directory / f"{zone.name or 'root'}.zone"
        plain.write_text(
            f"$ORIGIN {origin}\n$TTL 300\n"
            f"@ IN SOA ns.{origin.lstrip('.')} hostmaster.{origin.lstrip('.')} 1 3600 600 86400 300\n"
            f"@ IN NS ns.{origin.lstrip('.')}\nns IN A 127.0.0.1\n"
            + "".join(f"{line}\n" for line in zone.records)
        )
        if zone.signing is Signing.UNSIGNED:
            return None
        keygen = _binary("ldns-keygen", "ldnsutils")
        keys = []
        for ksk in (True, False):
            made = subprocess.run([keygen, "-a", "ECDSAP256SHA256", *(["-k"] if ksk else []), origin],
                                  cwd=self.directory, capture_output=True, text=True, timeout=60, check=True)
            keys.append(made.stdout.strip())
        subprocess.run([_binary("ldns-signzone", "ldnsutils"), "-f", str(self._zone_file(zone)), str(plain),
                        *keys], cwd=self.directory, capture_output=True, timeout=60, check=True)
        if zone.signing is Signing.BOGUS:
            signed = self._zone_file(zone)
            signed.write_text(corrupt_signatures(signed.read_text(), zone.bogus_types))
        ds = (self.directory / f"{keys[0]}.ds").read_text().split()
        return " ".join(ds)

    def _wait_until_answering(self, stderr_path: Path, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        probe = dns.message.make_query(f"{self.zones[0].name}.", "SOA")
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"unbound exited with {self.proc.returncode}: {stderr_path.read_text()}"
                                   f"{self.log_path.read_text() if self.log_path.exists() else ''}")
            try:
                dns.query.udp(probe, "127.0.0.1", port=self.port, timeout=0.5)
                return
            except (dns.exception.Timeout, OSError):
                time.sleep(0.05)
        raise TimeoutError(f"unbound did not answer on 127.0.0.1:{self.port}")

    def ask(self, name: str, rdtype: str) -> dns.message.Message:
        """One question with the AD bit set (RFC 6840 section 5.7), as trimta asks it."""
        query = dns.message.make_query(name, rdtype)
        query.flags |= dns.flags.AD
        return dns.query.udp(query, "127.0.0.1", port=self.port, timeout=5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture(scope="module")
def unbound(tmp_path_factory, request) -> Iterator[Unbound]:
    """unbound answering for the module's ``UNBOUND_ZONES`` (a list of `Zone`)."""
    server = Unbound(tmp_path_factory.mktemp("unbound"), getattr(request.module, "UNBOUND_ZONES", []))
    try:
        server.start()
        yield server
    finally:
        server.stop()
