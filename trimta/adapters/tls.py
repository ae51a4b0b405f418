"""TLS contexts for the listener (server side) and, later, the SMTP client."""

from __future__ import annotations

import ssl
from pathlib import Path


class TlsFileError(ValueError):
    """A certificate or key file that TLS could not use; `key` says which config key named it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def server_context(certificate: Path, private_key: Path) -> ssl.SSLContext:
    """A server context for STARTTLS: TLS 1.2 or newer, the system's default ciphers."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(certificate), str(private_key), password=_no_password)
    return ctx


def check_server_files(certificate: Path, private_key: Path) -> None:
    """Load the pair as `server_context` will, and say what is wrong in terms of the files.

    OpenSSL's own messages ("[SSL] PEM lib (_ssl.c:3900)") name no file; the checks
    here run one step at a time so the message can: the certificate alone first, then
    the key against it. Raises `TlsFileError`.
    """
    try:
        text = certificate.read_text(encoding="ascii", errors="replace")
    except OSError as exc:
        raise TlsFileError("tls_certificate", f"cannot read {certificate}: {exc.strerror or exc}") from None
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise TlsFileError(
            "tls_certificate",
            f"{certificate} holds no PEM certificate (expected a -----BEGIN CERTIFICATE----- block)",
        )
    try:
        ssl.create_default_context().load_verify_locations(cadata=text)
    except (ssl.SSLError, ValueError) as exc:
        raise TlsFileError("tls_certificate", f"{certificate}: not a valid PEM certificate ({_reason(exc)})") from None
    try:
        key_text = private_key.read_text(encoding="ascii", errors="replace")
    except OSError as exc:
        raise TlsFileError("tls_private_key", f"cannot read {private_key}: {exc.strerror or exc}") from None
    if "PRIVATE KEY-----" not in key_text:
        raise TlsFileError(
            "tls_private_key",
            f"{private_key} holds no PEM private key (expected a -----BEGIN PRIVATE KEY----- block)",
        )
    try:
        server_context(certificate, private_key)
    except _EncryptedKey:
        raise TlsFileError(
            "tls_private_key", f"{private_key} is encrypted; give an unencrypted key (openssl pkey -in KEY -out NEW)"
        ) from None
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            raise TlsFileError(
                "tls_private_key", f"{private_key} is not the private key of the certificate in {certificate}"
            ) from None
        raise TlsFileError("tls_private_key", f"{private_key}: not a valid PEM private key ({_reason(exc)})") from None


class _EncryptedKey(Exception):
    pass


def _no_password() -> bytes:
    """Asked for a key's passphrase: there is none to give (and no terminal to prompt on)."""
    raise _EncryptedKey


def _reason(exc: Exception) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason).replace("_", " ").lower() if reason else str(exc)
