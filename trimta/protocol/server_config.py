"""What one ESMTP listener offers: the settings of a `ServerConnection`.

Its own module because both halves of the server read it: `server` (which cuts the
byte stream) and `_session` (which decides what each command means and advertises
the EHLO keywords).
"""

from __future__ import annotations

from dataclasses import dataclass

from trimta.protocol import _sasl


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """What one listener offers. For every limit, 0 means no limit."""

    hostname: str
    max_message_size: int = 20_000_000  # octets; advertised as SIZE (RFC 1870)
    max_recipients: int = 1024  # per transaction; beyond: 452 4.5.3
    max_errors: int = 10  # refused commands per session; beyond: 421 4.7.0, close
    max_messages_per_connection: int = 10_000  # beyond: 421 4.7.0 at the next MAIL
    starttls_available: bool = False  # a certificate is configured
    auth_mechanisms: tuple[str, ...] = ()  # subset of PLAIN, LOGIN; empty: no AUTH
    auth_without_tls: bool = False  # offer AUTH on a plaintext session

    def __post_init__(self) -> None:
        unknown = [m for m in self.auth_mechanisms if m not in _sasl.MECHANISMS]
        if unknown:
            raise ValueError(f"unsupported AUTH mechanisms {unknown}; supported: {list(_sasl.MECHANISMS)}")
