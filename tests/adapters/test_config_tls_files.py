"""TLS files are checked when the configuration is read: `check-config` catches what `serve` would trip on.

Before, a certificate that was not PEM, or a key that did not belong to it, passed
`check-config` and then stopped `serve` with OpenSSL's "[SSL] PEM lib", naming no file.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from trimta.cli import main


def make_pair(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
         "-days", "2", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=120,
    )
    return cert, key


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    return make_pair(d, "one"), make_pair(d, "two")


def check(tmp_path: Path, cert: Path, key: Path, capsys) -> tuple[int, str]:
    config = tmp_path / "trimta.toml"
    config.write_text(f'hostname = "mta1.example.com"\n\n[[listener]]\nlisten = "127.0.0.1:2525"\n'
                      f'tls_certificate = "{cert}"\ntls_private_key = "{key}"\n')
    status = main(["check-config", "--config", str(config)])
    captured = capsys.readouterr()
    return status, captured.err


def test_a_matching_pair_passes(tmp_path, pairs, capsys):
    (cert, key), _ = pairs
    assert check(tmp_path, cert, key, capsys) == (0, "")


def test_a_key_of_another_certificate_is_named_with_both_files(tmp_path, pairs, capsys):
    (cert, _), (_, other_key) = pairs
    status, err = check(tmp_path, cert, other_key, capsys)
    assert status == 1
    assert err == (f"trimta check-config: {tmp_path / 'trimta.toml'}:6: listener[0].tls_private_key: "
                   f"{other_key} is not the private key of the certificate in {cert}\n")


def test_a_certificate_file_without_pem_is_named(tmp_path, pairs, capsys):
    (_, key), _ = pairs
    bad = tmp_path / "bad.crt"
    bad.write_text("this is not a certificate\n")
    status, err = check(tmp_path, bad, key, capsys)
    assert status == 1
    assert err.startswith(f"trimta check-config: {tmp_path / 'trimta.toml'}:5: listener[0].tls_certificate: {bad} ")
    assert "BEGIN CERTIFICATE" in err and err.count("\n") == 1


def test_a_damaged_pem_certificate_is_named(tmp_path, pairs, capsys):
    (_, key), _ = pairs
    bad = tmp_path / "damaged.crt"
    bad.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    status, err = check(tmp_path, bad, key, capsys)
    assert status == 1
    assert f"listener[0].tls_certificate: {bad}: not a valid PEM certificate" in err


def test_a_certificate_given_as_the_key_is_named(tmp_path, pairs, capsys):
    (cert, _), _ = pairs
    status, err = check(tmp_path, cert, cert, capsys)
    assert status == 1
    assert f"listener[0].tls_private_key: {cert} holds no PEM private key" in err


def test_an_encrypted_key_is_refused_without_prompting(tmp_path, pairs, capsys):
    (cert, _), _ = pairs
    key = tmp_path / "enc.key"
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-aes256", "-pass", "pass:x", "-out", str(key)],
                   check=True, capture_output=True, timeout=120)
    status, err = check(tmp_path, cert, key, capsys)
    assert status == 1
    assert f"listener[0].tls_private_key: {key} is encrypted" in err
