"""`trimta dkim keygen` and `trimta dkim check`: what an operator runs and reads."""

from __future__ import annotations

import re
import stat

import pytest

from tests.dkim_verifiers import txt_record_option
from tests.dnsmasq import Dnsmasq
from trimta.adapters.dkim import read_key
from trimta.cli import main
from trimta.core.dkim import Algorithm


def keygen(capsys, *args):
    code = main(["dkim", "keygen", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_keygen_writes_a_private_key_0600_and_prints_the_record(tmp_path, capsys):
    keys = tmp_path / "keys"
    code, out, _ = keygen(capsys, "--domain", "Example.COM", "--selector", "s1", "--key-directory", str(keys))
    assert code == 0
    path = keys / "example.com" / "s1.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert read_key(str(path), Algorithm.RSA_SHA256).key.key_size == 2048
    record = re.search(r'^s1\._domainkey\.example\.com\. IN TXT ((?:"[^"]*" ?)+)$', out, re.M)
    assert record is not None
    strings = re.findall(r'"([^"]*)"', record.group(1))
    assert all(len(s) <= 255 for s in strings)
    assert "".join(strings) == read_key(str(path), Algorithm.RSA_SHA256).public_record()


def test_keygen_ed25519_and_the_config_key_directory(tmp_path, capsys, monkeypatch):
    (tmp_path / "trimta.toml").write_text('[dkim]\nkey_directory = "k"\n')
    monkeypatch.chdir(tmp_path)
    code, out, _ = keygen(capsys, "--domain", "example.com", "--selector", "ed", "--algo", "ed25519")
    assert code == 0
    assert "k=ed25519; p=" in out
    read_key(str(tmp_path / "k" / "example.com" / "ed.key"), Algorithm.ED25519_SHA256)


def test_keygen_never_overwrites_and_refuses_odd_sizes(tmp_path, capsys):
    keys = str(tmp_path)
    assert keygen(capsys, "--domain", "a.test", "--selector", "s", "--key-directory", keys, "--bits", "1024")[0] == 0
    before = (tmp_path / "a.test" / "s.key").read_bytes()
    code, _, err = keygen(capsys, "--domain", "a.test", "--selector", "s", "--key-directory", keys)
    assert code == 1 and "exists; a key is never overwritten" in err
    assert (tmp_path / "a.test" / "s.key").read_bytes() == before
    code, _, err = keygen(capsys, "--domain", "a.test", "--selector", "t", "--key-directory", keys, "--bits", "512")
    assert code == 1 and "--bits: RSA keys have 1024 to 4096 bits, not 512" in err
    code, _, err = keygen(capsys, "--domain", "../etc", "--selector", "t", "--key-directory", keys)
    assert code == 1 and "not a DNS name" in err


@pytest.fixture
def published(tmp_path, capsys):
    """Two keys on disk; DNS publishes the first, and a stale record for the second."""
    keys = tmp_path / "keys"
    for selector in ("good", "stale", "unpublished"):
        assert keygen(capsys, "--domain", "example.test", "--selector", selector, "--key-directory", str(keys),
                      "--bits", "1024")[0] == 0
    good = read_key(str(keys / "example.test" / "good.key"), Algorithm.RSA_SHA256).public_record()
    other = read_key(str(keys / "example.test" / "unpublished.key"), Algorithm.RSA_SHA256).public_record()
    zone = [txt_record_option("good._domainkey.example.test", good),
            txt_record_option("stale._domainkey.example.test", other)]
    server = Dnsmasq(tmp_path, zone)
    server.start()
    config = tmp_path / "trimta.toml"
    config.write_text(f'[dns]\nnameservers = ["{server.nameserver}"]\ntimeout = "2s"\n'
                      f'[dkim]\nkey_directory = "keys"\n')
    yield config
    server.stop()


@pytest.mark.parametrize(("selector", "code", "expected"), [
    ("good", 0, "good._domainkey.example.test: the published key matches"),
    ("stale", 1, "stale._domainkey.example.test: publishes another key than"),
    ("unpublished", 1, "unpublished._domainkey.example.test: no TXT record: NXDOMAIN"),
])
def test_check_compares_dns_with_the_key_on_disk(published, capsys, selector, code, expected):
    assert main(["dkim", "check", "--domain", "example.test", "--selector", selector,
                 "--config", str(published)]) == code
    captured = capsys.readouterr()
    assert expected in (captured.out if code == 0 else captured.err)
