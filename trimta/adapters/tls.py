"""TLS contexts for the listener (server side) and, later, the SMTP client."""

from __future__ import annotations

import ssl
from pathlib import Path


def server_context(certificate: Path, private_key: Path) -> ssl.SSLContext:
    """A server context for STARTTLS: TLS 1.2 or newer, the system's default ciphers."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(certificate), str(private_key))
    return ctx
