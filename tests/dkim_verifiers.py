"""Two DKIM verifiers nobody here wrote, asking dnsmasq for the keys.

- dkimpy's ``dkimverify`` command (its own `main`), with dnspython's default resolver
  pointed at the test's dnsmasq (dkimverify has no option for it);
- Perl's Mail::DKIM (``Mail::DKIM::Verifier``, the verifier SpamAssassin and amavis
  use), with Net::DNS pointed at dnsmasq; it reports every signature's result (Debian
  12's cannot check Ed25519);
- OpenDKIM (Debian's ``opendkim`` in its test mode, ``-t``), with its libunbound
  forwarding to dnsmasq: the verifier behind Postfix and Sendmail milters, and the
  second one that checks Ed25519-SHA256 (RFC 8463).

Under CI=true a missing verifier fails the test; elsewhere it skips it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

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


# libunbound refuses to query loopback addresses and answers NXDOMAIN for test. (RFC 6761)
# by default: both are lifted for the test's dnsmasq.
_UNBOUND_CONF = """server:
    do-not-query-localhost: no
    local-zone: "test." nodefault
    module-config: "iterator"
forward-zone:
    name: "."
    forward-addr: 127.0.0.1@{port}
"""

_OPENDKIM_CONF = """Mode v
ResolverConfiguration {unbound}
Syslog no
AlwaysAddARHeader yes
MaximumSignaturesToVerify 10
"""

# One result per line; a comment such as "(2048-bit key; unprotected)" may hold a ";".
_AR_DKIM = re.compile(r"dkim=(\w+)[^\n]*?header\.d=([^\s;]+)[^\n]*?header\.a=([^\s;]+)")


def opendkim(message: bytes, dns_port: int) -> list[tuple[str, str, str]]:
    """OpenDKIM's (domain, algorithm, result) for each signature, from the
    Authentication-Results header it would add ("pass", "fail", ...)."""
    binary = shutil.which("opendkim") or ("/usr/sbin/opendkim" if os.access("/usr/sbin/opendkim", os.X_OK) else None)
    if binary is None:
        _missing("OpenDKIM (opendkim)")
    with tempfile.TemporaryDirectory(prefix="opendkim-verify-") as tmp:
        directory = Path(tmp)
        (directory / "unbound.conf").write_text(_UNBOUND_CONF.format(port=dns_port))
        (directory / "opendkim.conf").write_text(_OPENDKIM_CONF.format(unbound=directory / "unbound.conf"))
        (directory / "message.eml").write_bytes(message)
        result = subprocess.run([binary, "-x", str(directory / "opendkim.conf"), "-t", str(directory / "message.eml"),
                                 "-vvv"], capture_output=True, timeout=60)
    out = result.stderr.decode() + result.stdout.decode()
    assert result.returncode == 0, out
    headers = re.findall(r"hname='Authentication-Results' hvalue='([^']*)'", out)
    assert len(headers) == 1, out
    return [(domain, algorithm, verdict) for verdict, domain, algorithm in _AR_DKIM.findall(headers[0])]


def txt_record_option(name: str, record: str) -> str:
    """dnsmasq's ``--txt-record`` for a DKIM key: strings of at most 255 octets (RFC 1035)."""
    chunks = [record[i:i + 250] for i in range(0, len(record), 250)]
    return f"--txt-record={name}," + ",".join(chunks)
