"""``trimta dkim``: make DKIM keys and check what DNS publishes for them.

``trimta dkim keygen --domain D --selector S [--algo rsa|ed25519] [--bits 2048]``
writes a new private key to ``KEY_DIRECTORY/D/S.key`` (mode 0600, directories 0700;
an existing file is never replaced) and prints the TXT record to publish at
``S._domainkey.D``. ``trimta dkim check --domain D --selector S`` asks the
configured resolver for that record and says whether it publishes the key on disk.
The key directory is ``--key-directory``, else the config's ``[dkim] key_directory``.
See docs/dkim.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import trio

from trimta.adapters.config import Config, ConfigError, load_config
from trimta.core.dkim import Algorithm, parse_tag_list

ALGOS = {"rsa": Algorithm.RSA_SHA256, "ed25519": Algorithm.ED25519_SHA256}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("dkim", help="make DKIM keys and check their DNS records",
                                   description="Make DKIM keys and check their DNS records (docs/dkim.md).")
    sub = parser.add_subparsers(dest="dkim_command", metavar="ACTION")

    keygen = sub.add_parser("keygen", help="write a new key and print the TXT record to publish",
                            description="Write KEY_DIRECTORY/DOMAIN/SELECTOR.key (mode 0600) and print the "
                                        "TXT record to publish at SELECTOR._domainkey.DOMAIN.")
    _common(keygen)
    keygen.add_argument("--algo", choices=sorted(ALGOS), default="rsa", help="key type (default: rsa)")
    keygen.add_argument("--bits", type=int, default=2048, help="RSA key size, 1024 to 4096 (default: 2048)")
    keygen.set_defaults(func=run_keygen)

    check = sub.add_parser("check", help="say whether DNS publishes the key on disk",
                           description="Look up SELECTOR._domainkey.DOMAIN through the configured resolver "
                                       "and compare it with KEY_DIRECTORY/DOMAIN/SELECTOR.key.")
    _common(check)
    check.add_argument("--key", metavar="FILE", help="the key file (default: KEY_DIRECTORY/DOMAIN/SELECTOR.key)")
    check.set_defaults(func=run_check)
    parser.set_defaults(func=lambda args: _usage(parser))


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--domain", required=True, help="the signing domain (d=)")
    p.add_argument("--selector", required=True, help="the selector (s=)")
    p.add_argument("--key-directory", metavar="DIR", help="default: the config's [dkim] key_directory")
    p.add_argument("--config", metavar="FILE", help="trimta.toml (default: ./trimta.toml, else the embedded default)")


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _fail(message: str) -> int:
    print(f"trimta dkim: {message}", file=sys.stderr)
    return 1


def _key_path(args: argparse.Namespace, config_dkim: object | None) -> Path:
    if args.key_directory:
        directory = Path(args.key_directory)
    else:
        directory = getattr(config_dkim, "key_directory", None) or Path("/etc/trimta/dkim")
    return Path(directory) / args.domain.lower().rstrip(".") / f"{args.selector}.key"


def _valid_names(args: argparse.Namespace) -> str | None:
    for what, name in (("domain", args.domain), ("selector", args.selector)):
        if not name or "/" in name or name.startswith(".") or any(c.isspace() for c in name):
            return f"--{what}: not a DNS name: {name!r}"
    return None


def _load_config(args: argparse.Namespace) -> Config | None:
    """The configuration, or None when --key-directory is given and no --config (no need)."""
    if args.key_directory and not args.config:
        return None
    return load_config(args.config)


def run_keygen(args: argparse.Namespace) -> int:
    from trimta.adapters.dkim import KeyProblem, generate_key, parse_key, public_record

    problem = _valid_names(args)
    if problem:
        return _fail(problem)
    try:
        config = _load_config(args)
    except ConfigError as exc:
        return _fail(str(exc))
    path = _key_path(args, config.dkim if config else None)
    algorithm = ALGOS[args.algo]
    try:
        pem = generate_key(algorithm, args.bits)
    except KeyProblem as exc:
        return _fail(f"--bits: {exc}")
    try:
        for directory in reversed([path.parent, *[p for p in path.parent.parents if not p.exists()]]):
            if not directory.exists():
                directory.mkdir(mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _fail(f"{path} exists; a key is never overwritten (choose a new selector to rotate)")
    except OSError as exc:
        return _fail(f"cannot write {path}: {exc.strerror or exc}")
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    record = public_record(parse_key(pem, algorithm))
    print(f"wrote {path} (RSA, {args.bits} bits)" if algorithm is Algorithm.RSA_SHA256 else f"wrote {path} (Ed25519)")
    print("publish this TXT record:")
    print(f"{args.selector}._domainkey.{args.domain.lower().rstrip('.')}. IN TXT {_quoted(record)}")
    return 0


def _quoted(record: str) -> str:
    """The record as zone-file strings of at most 255 octets each."""
    return " ".join(f'"{record[i:i + 255]}"' for i in range(0, len(record), 255))


def run_check(args: argparse.Namespace) -> int:
    from trimta.adapters.dkim import KeyProblem, parse_key, public_record
    from trimta.adapters.dns import DnspythonLookup, ResolverConfig, Status

    problem = _valid_names(args)
    if problem:
        return _fail(problem)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return _fail(str(exc))
    path = Path(args.key) if args.key else _key_path(args, config.dkim)
    try:
        data = path.read_bytes()
    except OSError as exc:
        return _fail(f"{path}: cannot read the key: {exc.strerror or exc}")
    key = None
    for algorithm in Algorithm:
        try:
            key = parse_key(data, algorithm)
            break
        except KeyProblem as exc:
            last = exc
    if key is None:
        return _fail(f"{path}: {last}")
    expected = parse_tag_list(public_record(key))
    name = f"{args.selector}._domainkey.{args.domain.lower().rstrip('.')}"
    try:
        lookup = DnspythonLookup(config.dns if config.dns is not None else ResolverConfig())
    except ConfigError as exc:
        return _fail(str(exc))
    answer = trio.run(lookup.lookup, name + ".", "TXT")
    if answer.status is not Status.ANSWER:
        detail = f" ({answer.detail})" if answer.detail else ""
        return _fail(f"{name}: no TXT record: {answer.status.value.upper()}{detail}")
    records = []
    for text in answer.records:
        try:
            tags = parse_tag_list(text)
        except ValueError:
            continue
        if tags.get("v", "DKIM1") == "DKIM1" and "p" in tags:
            records.append(tags)
    if not records:
        return _fail(f"{name}: TXT records found, but none is a DKIM key record (v=DKIM1; ... p=...)")
    if len(records) > 1:
        return _fail(f"{name}: {len(records)} DKIM key records; verifiers need exactly one (RFC 6376 3.6.2.2)")
    published = records[0]
    if not published["p"]:
        return _fail(f"{name}: the key is revoked (empty p=)")
    if published.get("k", "rsa") != expected["k"]:
        return _fail(f"{name}: publishes a k={published.get('k', 'rsa')} key, but {path} is k={expected['k']}")
    if published["p"] != expected["p"]:
        return _fail(f"{name}: publishes another key than {path}; publish: {public_record(key)}")
    print(f"{name}: the published key matches {path}")
    return 0
