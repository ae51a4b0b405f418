"""Two DKIM verifiers nobody here wrote, asking dnsmasq for the keys.

- dkimpy's ``dkimverify`` command (its own `main`), with dnspython's default resolver
  pointed at the test's dnsmasq (dkimverify has no option for it);
- Perl's Mail::DKIM (``Mail::DKIM::Verifier``, the verifier SpamAssassin and amavis
  use), with Net::DNS pointed at dnsmasq; it reports every signature's result.

Under CI=true a missing verifier fails the test; elsewhere it skips it.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

_DKIMVERIFY = """
import sys, dns.resolver
resolver = dns.resolver.Resolver(configure=False)
resolver.nameservers = ["127.0.0.1"]
resolver.port = int(sys.argv.pop(1))
dns.resolver.default_resolver = resolver
from dkim.dkimverify import main
main()
"""

_MAIL_DKIM = r"""
use strict;
use Mail::DKIM::Verifier;
use Net::DNS;
my $port = shift @ARGV;
Mail::DKIM::DNS::resolver(Net::DNS::Resolver->new(nameservers => ['127.0.0.1'], port => $port,
                                                  recurse => 1, udp_timeout => 5, tcp_timeout => 5));
my $dkim = Mail::DKIM::Verifier->new();
binmode STDIN;
while (<STDIN>) { s/\015?\012\z/\015\012/; $dkim->PRINT($_); }
$dkim->CLOSE;
foreach my $sig ($dkim->signatures) {
    print join(" ", $sig->domain, $sig->selector, $sig->algorithm, $sig->result_detail), "\n";
}
"""


def _missing(what: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is not installed (scripts/install-system-deps.sh installs it)")
    pytest.skip(f"{what} is not installed")


def dkimverify(message: bytes, dns_port: int, index: int = 0) -> bool:
    """dkimpy's verdict on signature `index` (0: the top one)."""
    try:
        import dkim  # noqa: F401
    except ImportError:
        _missing("dkimpy")
    result = subprocess.run([sys.executable, "-c", _DKIMVERIFY, str(dns_port), "--index", str(index)],
                            input=message, capture_output=True, timeout=60)
    out = result.stdout.decode()
    assert result.returncode in (0, 1), result.stderr.decode()
    return result.returncode == 0 and "signature ok" in out


def mail_dkim(message: bytes, dns_port: int) -> list[tuple[str, str, str, str]]:
    """Mail::DKIM's (domain, selector, algorithm, result detail) for each signature, top first."""
    probe = subprocess.run(["perl", "-MMail::DKIM::Verifier", "-MCrypt::PK::Ed25519", "-e1"], capture_output=True)
    if probe.returncode != 0:
        _missing("Perl's Mail::DKIM with CryptX (libmail-dkim-perl, libcryptx-perl)")
    result = subprocess.run(["perl", "-e", _MAIL_DKIM, str(dns_port)], input=message, capture_output=True,
                            timeout=60, check=True)
    return [tuple(line.split(" ", 3)) for line in result.stdout.decode().splitlines()]  # type: ignore[misc]


def txt_record_option(name: str, record: str) -> str:
    """dnsmasq's ``--txt-record`` for a DKIM key: strings of at most 255 octets (RFC 1035)."""
    chunks = [record[i:i + 250] for i in range(0, len(record), 250)]
    return f"--txt-record={name}," + ",".join(chunks)
