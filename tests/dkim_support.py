"""Keys and data files for DKIM tests: made fresh in a temporary directory."""

from __future__ import annotations

from pathlib import Path

from trimta.adapters.dkim import generate_key, parse_key, public_record
from trimta.core.dkim import Algorithm


def write_key(directory: Path, domain: str, selector: str, algorithm: Algorithm = Algorithm.RSA_SHA256,
              bits: int = 1024) -> str:
    """Write DIR/DOMAIN/SELECTOR.key; return the TXT record publishing it."""
    pem = generate_key(algorithm, bits)
    path = directory / domain / f"{selector}.key"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pem)
    return public_record(parse_key(pem, algorithm))
