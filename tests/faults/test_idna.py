"""International domains through the real daemon, with a real DNS server (dnsmasq).

``faß.test`` is ``xn--fa-hia.test`` in IDNA 2008; IDNA 2003 (Python's built-in codec)
made it ``fass.test``, a different domain with a different mail server. dnsmasq serves
both; mail to ``faß.test`` must reach the first's MX only, and ``user@faß.test`` and
``user@XN--FA-HIA.test`` must share one scheduled queue.
"""

from __future__ import annotations

import smtplib

from aiosmtpd.controller import Controller

from tests.dnsmasq import Dnsmasq
from tests.interop.test_delivery_e2e import Recorder, wait_for

from .conftest import free_port

ZONE = [
    "--mx-host=xn--fa-hia.test,mx.right.test,10",
    "--host-record=mx.right.test,127.0.0.21",
    "--mx-host=fass.test,mx.wrong.test,10",
    "--host-record=mx.wrong.test,127.0.0.22",
]


def test_mail_to_an_idn_goes_to_its_idna_2008_mx_in_one_queue(make_daemon, tmp_path):
    (tmp_path / "dns").mkdir()
    dns = Dnsmasq(tmp_path / "dns", ZONE)
    dns.start()
    port = free_port("127.0.0.21")
    right, wrong = Recorder(), Recorder()
    controllers = [Controller(right, hostname="127.0.0.21", port=port, enable_SMTPUTF8=True),
                   Controller(wrong, hostname="127.0.0.22", port=port, enable_SMTPUTF8=True)]
    for c in controllers:
        c.start()
    try:
        daemon = make_daemon(
            dns=f'nameservers = ["{dns.nameserver}"]\ntimeout = "10s"',
            extra_config=f'[egress.default]\nsmtp_port = {port}\nprohibited_hosts = []\n'
                         f'enable_tls = "Disabled"\nidle_timeout = "2s"\n',
        ).start()
        with smtplib.SMTP(daemon.host, daemon.port, timeout=30) as s:
            s.ehlo()
            s.sendmail("sender@example.com", ["ulrike@faß.test"], b"Subject: one\r\n\r\nu-label\r\n",
                       mail_options=["SMTPUTF8"])
            s.sendmail("sender@example.com", ["ulrike@XN--FA-HIA.test"], b"Subject: two\r\n\r\na-label\r\n")
        wait_for(lambda: len(right.messages) == 2, timeout=120, what="both messages at the IDNA 2008 MX")
        assert wrong.messages == []
        assert sorted(m["recipients"][0] for m in right.messages) == ["ulrike@XN--FA-HIA.test", "ulrike@faß.test"]
        receptions = wait_for(lambda: len(r := daemon.records("Reception")) == 2 and r, what="Reception records")
        assert {r["queue"] for r in receptions} == {"xn--fa-hia.test"}
        assert dns.queries("fass.test") == 0
    finally:
        for c in controllers:
            c.stop()
        dns.stop()
