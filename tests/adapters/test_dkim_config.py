"""[dkim], KumoMTA's DKIM data files and the signer built from them: what an operator writes, what mail gets."""

from __future__ import annotations

import textwrap

import dkim as dkimpy  # test oracle only
import pytest

from tests.dkim_support import write_key
from trimta.adapters.config import ConfigError, load_config
from trimta.adapters.dkim import DkimSigner, generate_key
from trimta.core.dkim import Algorithm, SigningRefused
from trimta.core.dkim_policy import DomainMap
from trimta.cli import main

MESSAGE = b"From: News <news@example.com>\r\nTo: you@example.net\r\nSubject: hi\r\n\r\nHello.\r\n"


def make(tmp_path, data: str, extra: str = "", files=("dkim_data.toml",)):
    (tmp_path / "dkim_data.toml").write_text(textwrap.dedent(data))
    config = tmp_path / "trimta.toml"
    names = ", ".join(f'"{f}"' for f in files)
    config.write_text(f'[dkim]\nfiles = [{names}]\nkey_directory = "keys"\n' + textwrap.dedent(extra))
    return config


def records(tmp_path, *pairs):
    return {f"{s}._domainkey.{d}.": write_key(tmp_path / "keys", d, s, *rest) for d, s, *rest in pairs}


def verify_all(data: bytes, dns: dict[str, str]) -> list[bool]:
    """dkimpy's verdict on each signature, top first."""
    lookup = lambda name, timeout=5: dns.get(name.decode(), "").encode()  # noqa: E731
    d = dkimpy.DKIM(data)
    count = sum(1 for line in data.split(b"\r\n\r\n")[0].split(b"\r\n") if line.startswith(b"DKIM-Signature:"))
    return [d.verify(idx=i, dnsfunc=lookup) for i in range(count)]


def test_domain_block_signs_mail_from_its_domain(tmp_path):
    dns = records(tmp_path, ("example.com", "s1"))
    config = load_config(make(tmp_path, """
        [base]
        selector = "s1"
        [domain."example.com"]
    """))
    signed, added = config.dkim_signer.sign(MESSAGE, tenant=None, now=1_700_000_000)
    assert [(a.domain, a.selector, a.algorithm) for a in added] == [("example.com", "s1", "rsa-sha256")]
    assert verify_all(signed, dns) == [True]


def test_mail_from_a_domain_without_a_block_is_not_signed(tmp_path):
    records(tmp_path, ("example.org", "s1"))
    config = load_config(make(tmp_path, '[domain."example.org"]\nselector = "s1"\n'))
    assert config.dkim_signer.sign(MESSAGE, tenant=None, now=1_700_000_000) == (MESSAGE, ())


def test_esp_signature_always_and_only_if_missing_domain_block(tmp_path):
    dns = records(tmp_path, ("example.com", "s1"), ("esp.test", "esp"), ("fallback.test", "fb"))
    config = load_config(make(tmp_path, """
        [base]
        selector = "s1"
        additional_signatures = ["esp", "fallback"]
        [domain."example.com"]
        [signature."esp"]
        domain = "esp.test"
        selector = "esp"
        policy = "Always"
        [signature."fallback"]
        domain = "fallback.test"
        selector = "fb"
        policy = "OnlyIfMissingDomainBlock"
    """))
    signed, added = config.dkim_signer.sign(MESSAGE, tenant=None, now=1_700_000_000)
    assert [a.domain for a in added] == ["example.com", "esp.test"]
    assert verify_all(signed, dns) == [True, True]
    other = MESSAGE.replace(b"news@example.com", b"news@elsewhere.test")
    signed, added = config.dkim_signer.sign(other, tenant=None, now=1_700_000_000)
    assert [a.domain for a in added] == ["esp.test", "fallback.test"]
    assert verify_all(signed, dns) == [True, True]


def test_rsa_and_ed25519_for_one_domain(tmp_path):
    dns = records(tmp_path, ("example.com", "rsa"), ("example.com", "ed", Algorithm.ED25519_SHA256))
    config = load_config(make(tmp_path, """
        [base]
        additional_signatures = ["ed"]
        [domain."example.com"]
        selector = "rsa"
        [signature."ed"]
        domain = "example.com"
        selector = "ed"
        algo = "ed25519"
    """))
    signed, added = config.dkim_signer.sign(MESSAGE, tenant=None, now=1_700_000_000)
    assert [a.algorithm for a in added] == ["rsa-sha256", "ed25519-sha256"]
    assert verify_all(signed, dns) == [True, True]


def test_wildcard_domain_block_signs_subdomains_with_their_own_keys(tmp_path):
    dns = records(tmp_path, ("news.example.com", "s1"))
    config = load_config(make(tmp_path, '[domain."*.example.com"]\nselector = "s1"\n'))
    signer = config.dkim_signer
    assert signer.sign(MESSAGE, tenant=None, now=1_700_000_000)[1] == ()  # example.com itself: no match
    sub = MESSAGE.replace(b"news@example.com", b"a@news.example.com")
    signed, added = signer.sign(sub, tenant=None, now=1_700_000_000)
    assert [(a.domain, a.selector) for a in added] == [("news.example.com", "s1")]
    assert verify_all(signed, dns) == [True]
    # A subdomain whose key is not on disk is refused for now (451), never sent unsigned.
    with pytest.raises(SigningRefused) as refused:
        signer.sign(MESSAGE.replace(b"news@example.com", b"a@other.example.com"), tenant=None, now=1_700_000_000)
    assert refused.value.reply.code == 451


def test_domain_map_follows_kumomta():
    m = DomainMap({"*.example.com": "wild", "explicit.example.com": "exact", "example.com": "apex"})
    assert m.get("foo.example.com") == "wild"
    assert m.get("a.b.example.com") == "wild"
    assert m.get("explicit.example.com") == "exact"
    assert m.get("EXAMPLE.com") == "apex"
    assert m.get("woot.com") is None
    assert DomainMap({"*.woot.com": 1}).get("woot.com") is None


def test_no_from_or_several_get_552_5_6_0(tmp_path):
    records(tmp_path, ("example.com", "s1"))
    config = load_config(make(tmp_path, '[domain."example.com"]\nselector = "s1"\n'))
    for data in (b"To: a@b.c\r\n\r\nx\r\n", b"From: a@example.com\r\nFrom: b@example.com\r\n\r\nx\r\n"):
        with pytest.raises(SigningRefused) as refused:
            config.dkim_signer.sign(data, tenant=None, now=1_700_000_000)
        assert (refused.value.reply.code, refused.value.reply.enhanced) == (552, (5, 6, 0))


def test_files_merge_in_order_key_by_key(tmp_path):
    dns = records(tmp_path, ("example.com", "new"))
    (tmp_path / "second.toml").write_text('[base]\nselector = "new"\n[domain."example.com"]\nover_sign = true\n')
    config = load_config(make(tmp_path, """
        [base]
        selector = "old"
        headers = ["From", "Subject"]
        [domain."example.com"]
        header_canonicalization = "Simple"
    """, files=("dkim_data.toml", "second.toml")))
    signed, added = config.dkim_signer.sign(MESSAGE, tenant=None, now=1_700_000_000)
    assert added[0].selector == "new"
    head = signed.split(b"\r\n\r\n")[0].replace(b"\r\n\t", b" ")
    assert b"c=simple/relaxed" in head and b"h=from:from:subject:subject;" in head
    assert verify_all(signed, dns) == [True]


def test_tenant_can_opt_out_or_bring_its_own_signature(tmp_path):
    dns = records(tmp_path, ("esp.test", "esp"), ("acme.test", "a1"))
    config = load_config(make(tmp_path, """
        [base]
        additional_signatures = ["esp"]
        [signature."esp"]
        domain = "esp.test"
        selector = "esp"
        [signature."acme"]
        domain = "acme.test"
        selector = "a1"
    """, extra="""
        [tenants.trial]
        dkim = false
        [tenants.acme]
        dkim = ["acme"]
    """))
    signer = config.dkim_signer
    assert [a.domain for a in signer.sign(MESSAGE, tenant="shared", now=1_700_000_000)[1]] == ["esp.test"]
    assert signer.sign(MESSAGE, tenant="trial", now=1_700_000_000) == (MESSAGE, ())
    signed, added = signer.sign(MESSAGE, tenant="acme", now=1_700_000_000)
    assert [a.domain for a in added] == ["acme.test"]
    assert verify_all(signed, dns) == [True]


@pytest.mark.parametrize(("data", "extra", "expected"), [
    ('[domain."example.com"]\n', "", 'dkim_data.toml: domain."example.com".selector: no selector, and [base] sets none'),
    ('[base]\nselector = "s"\nadditional_signatures = ["esp"]\n', "",
     "dkim_data.toml: base.additional_signatures: names 'esp', but no file has a [signature.\"esp\"] block"),
    ('[signature."esp"]\nselector = "s"\n', "", 'signature."esp".domain: a signature block needs the signing domain'),
    ('[domain."example.com"]\nselector = "s"\nalgo = "sha1"\n', "", 'expected "sha256" (RSA-SHA256) or "ed25519"'),
    ('[domain."example.com"]\nselector = "s"\npolicy = "OnlyIfMissingDomainBlock"\n', "",
     "a domain block's policy can only be \"Always\""),
    ('[domain."example.com"]\nselectr = "s"\n', "", "did you mean 'selector'?"),
    ('[base]\nvault_mount = "secret"\n', "", "HashiCorp Vault are not supported"),
    ('[base]\nselector = "s"\n', '[tenants.acme]\ndkim = ["nope"]\n', 'tenants.acme.dkim: no [signature."nope"] block'),
    ('[base]\nselector = "s"\n', "[tenants.acme]\ndkim = 3\n", "tenants.acme.dkim: expected false, true or a list"),
])
def test_data_file_mistakes_name_file_and_key(tmp_path, data, extra, expected):
    with pytest.raises(ConfigError) as error:
        load_config(make(tmp_path, data, extra))
    assert expected in str(error.value)


def test_key_problems_name_the_block_and_the_key_file(tmp_path):
    config = make(tmp_path, '[domain."example.com"]\nselector = "s1"\n')
    key = tmp_path / "keys" / "example.com" / "s1.key"
    with pytest.raises(ConfigError, match=f'domain."example.com": key {key}: no such key file'):
        load_config(config)
    key.parent.mkdir(parents=True)
    key.write_text("not a key\n")
    with pytest.raises(ConfigError, match="not a private key"):
        load_config(config)
    key.write_bytes(generate_key(Algorithm.ED25519_SHA256))
    with pytest.raises(ConfigError, match='an Ed25519 key, but the block says algo = "sha256"'):
        load_config(config)


def test_rsa_keys_below_1024_bits_are_refused(tmp_path):
    import subprocess

    key = tmp_path / "keys" / "example.com" / "s1.key"
    key.parent.mkdir(parents=True)
    # cryptography will not make one that small; OpenSSL's command line will.
    subprocess.run(["openssl", "genrsa", "-out", str(key), "768"], check=True, capture_output=True)
    with pytest.raises(ConfigError, match="an RSA key of 768 bits; DKIM keys must have 1024 to 4096 bits"):
        load_config(make(tmp_path, '[domain."example.com"]\nselector = "s1"\n'))


def test_pkcs1_pem_and_ed25519_der_keys_load(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    keys = tmp_path / "keys"
    (keys / "example.com").mkdir(parents=True)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    (keys / "example.com" / "s1.key").write_bytes(rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    (keys / "ed.der").write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    config = load_config(make(tmp_path, f"""
        [base]
        additional_signatures = ["ed"]
        [domain."example.com"]
        selector = "s1"
        [signature."ed"]
        domain = "example.com"
        selector = "ed"
        algo = "ed25519"
        filename = "{keys / 'ed.der'}"
    """))
    assert len(config.dkim_signer.sign(MESSAGE, tenant=None, now=1_700_000_000)[1]) == 2


def test_a_key_gone_at_reload_keeps_the_cached_key_and_logs_once(tmp_path, caplog):
    dns = records(tmp_path, ("example.com", "s1"))
    path = make(tmp_path, '[domain."example.com"]\nselector = "s1"\n')
    first = load_config(path)
    (tmp_path / "keys" / "example.com" / "s1.key").unlink()
    second = load_config(path, dkim_previous=first.dkim_signer)
    third = load_config(path, dkim_previous=second.dkim_signer)
    assert len([r for r in caplog.records if "has disappeared" in r.message]) == 1
    signed, _ = third.dkim_signer.sign(MESSAGE, tenant=None, now=1_700_000_000)
    assert verify_all(signed, dns) == [True]


def test_a_rotated_key_is_used_after_reload(tmp_path):
    records(tmp_path, ("example.com", "s1"))
    path = make(tmp_path, '[domain."example.com"]\nselector = "s1"\n')
    first = load_config(path)
    dns = records(tmp_path, ("example.com", "s1"))  # a new key in the same file
    second = load_config(path, dkim_previous=first.dkim_signer)
    assert verify_all(second.dkim_signer.sign(MESSAGE, tenant=None, now=1_700_000_000)[0], dns) == [True]
    assert verify_all(first.dkim_signer.sign(MESSAGE, tenant=None, now=1_700_000_000)[0], dns) == [False]


def test_signer_survives_pickling_as_reception_workers_get_it(tmp_path):
    import pickle

    dns = records(tmp_path, ("example.com", "s1"))
    config = load_config(make(tmp_path, '[domain."example.com"]\nselector = "s1"\n'))
    copy: DkimSigner = pickle.loads(pickle.dumps(config.dkim_signer))
    assert verify_all(copy.sign(MESSAGE, tenant=None, now=1_700_000_000)[0], dns) == [True]


def test_check_config_reports_dkim_and_fails_on_a_bad_key(tmp_path, capsys):
    records(tmp_path, ("example.com", "s1"))
    config = make(tmp_path, '[domain."example.com"]\nselector = "s1"\n')
    assert main(["check-config", "--config", str(config)]) == 0
    assert "1 domain blocks, 0 signature blocks, 1 keys read" in capsys.readouterr().out
    (tmp_path / "keys" / "example.com" / "s1.key").write_text("garbage")
    assert main(["check-config", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "dkim_data.toml: domain.\"example.com\": key " in err and "s1.key: not a private key" in err
    assert "Traceback" not in err
