"""Egress paths: the options that shape delivery on one (egress source, site) path.

Names are KumoMTA's egress path options (`connection_limit`, `max_message_rate`,
`idle_timeout`, `enable_tls`, ...), with units in the field names once parsed
(`idle_timeout_s`). Defaults follow KumoMTA's. Where the values come from (built-in
defaults, a plain override table, shaping files) is the business of an
`EgressPathProvider` (`trimta.core.egress_paths`); delivery code only asks it for the
path of (source, site, domain).
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field

from trimta.core.mx import IpLookupStrategy
from trimta.core.units import Limit, Rate

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TlsPolicy(enum.Enum):
    """`enable_tls`: whether and how STARTTLS is used towards a destination."""

    OPPORTUNISTIC = "Opportunistic"  # STARTTLS if offered, certificate verified; plain if not offered
    OPPORTUNISTIC_INSECURE = "OpportunisticInsecure"  # STARTTLS if offered, no verification
    REQUIRED = "Required"  # STARTTLS or fail (transient), certificate verified
    REQUIRED_INSECURE = "RequiredInsecure"  # STARTTLS or fail, no verification
    DISABLED = "Disabled"  # never STARTTLS

    @property
    def verify(self) -> bool:
        return self in (TlsPolicy.OPPORTUNISTIC, TlsPolicy.REQUIRED)

    @property
    def required(self) -> bool:
        return self in (TlsPolicy.REQUIRED, TlsPolicy.REQUIRED_INSECURE)

    @classmethod
    def parse(cls, text: str) -> TlsPolicy:
        for member in cls:
            if member.value.lower() == str(text).strip().lower():
                return member
        names = ", ".join(f'"{m.value}"' for m in cls)
        raise ValueError(f"expected one of {names}, got {text!r}")


@dataclass(frozen=True, slots=True)
class KeySource:
    """A secret as KumoMTA's keysource gives it: inline (``{ key_data = "..." }``) or a file's contents.

    Only the form is kept here; whoever sends the secret reads a file when it needs it.
    """

    data: str | None = None
    path: str | None = None

    def __repr__(self) -> str:  # never print a secret
        return f"KeySource(path={self.path!r})" if self.path else "KeySource(<inline>)"


# OpenSSL's option names, as KumoMTA's ``openssl_options`` takes them ("NO_TLSV1_3|NO_TICKET").
OPENSSL_OPTION_NAMES = (
    "ALL", "NO_QUERY_MTU", "COOKIE_EXCHANGE", "NO_TICKET", "NO_SESSION_RESUMPTION_ON_RENEGOTIATION",
    "NO_COMPRESSION", "ALLOW_UNSAFE_LEGACY_RENEGOTIATION", "SINGLE_ECDH_USE", "SINGLE_DH_USE", "TLS_ROLLBACK_BUG",
    "NO_SSLV2", "NO_SSLV3", "NO_TLSV1", "NO_TLSV1_1", "NO_TLSV1_2", "NO_TLSV1_3", "NO_DTLSV1", "NO_DTLSV1_2",
    "NO_RENEGOTIATION", "ENABLE_MIDDLEBOX_COMPAT", "CIPHER_SERVER_PREFERENCE", "PRIORITIZE_CHACHA",
)


@dataclass(frozen=True, slots=True)
class ClientTls:
    """What trimta's side of an outbound TLS session brings: a client certificate and
    OpenSSL settings (``tls_certificate``, ``tls_private_key``, ``openssl_cipher_list``,
    ``openssl_options``). The default brings nothing and takes OpenSSL's defaults."""

    certificate: KeySource | None = None  # PEM; may hold the private key too
    private_key: KeySource | None = None
    cipher_list: str | None = None  # OpenSSL's cipher string, for TLS 1.2 and lower
    options: tuple[str, ...] = ()  # names from OPENSSL_OPTION_NAMES


DEFAULT_PROHIBITED_HOSTS: tuple[Network, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)


@dataclass(frozen=True, slots=True)
class EgressPathConfig:
    """Every option of one egress path, parsed. Frozen: a reload makes a new one."""

    connection_limit: int = 32
    # ``connection_limit = "local:N"``: the limit stays on this node when limits are shared.
    connection_limit_local: bool = False
    max_connection_rate: Rate | None = None
    max_message_rate: Rate | None = None
    max_deliveries_per_connection: int = 1024
    max_ready: int = 1024
    idle_timeout_s: float = 60.0
    enable_tls: TlsPolicy = TlsPolicy.OPPORTUNISTIC
    # MTA-STS (RFC 8461): apply the domain's published policy (KumoMTA's option, default on).
    enable_mta_sts: bool = True
    smtp_port: int = 25
    prohibited_hosts: tuple[Network, ...] = DEFAULT_PROHIBITED_HOSTS
    skip_hosts: tuple[Network, ...] = ()
    # DANE (RFC 7672): TLSA records of DNSSEC-secure MX hosts decide TLS (KumoMTA's option, default off).
    enable_dane: bool = False
    ip_lookup_strategy: IpLookupStrategy = IpLookupStrategy.IPV4_AND_IPV6
    consecutive_connection_failures_before_delay: int = 100
    # How long a ready queue pauses once that many connections in a row failed.
    delay_after_connection_failures_s: float = 60.0
    connect_timeout_s: float = 60.0
    banner_timeout_s: float = 60.0
    ehlo_timeout_s: float = 300.0
    mail_from_timeout_s: float = 300.0
    rcpt_to_timeout_s: float = 300.0
    data_timeout_s: float = 300.0
    data_dot_timeout_s: float = 300.0
    starttls_timeout_s: float = 5.0
    rset_timeout_s: float = 5.0
    auth_timeout_s: float = 60.0
    enable_pipelining: bool = True
    # RSET before every transaction after a connection's first (KumoMTA's default is
    # true; trimta's false: RSET only when the previous transaction was left open).
    enable_rset: bool = False
    # At most this many RCPT TO in one transaction (trimta sends one recipient per message).
    max_recipients_per_batch: int = 100
    # A transport error, a timeout or a refusal before MAIL FROM: the message gets a
    # TransientFailure and the next host of the plan, instead of waiting for a retry.
    try_next_host_on_transport_error: bool = False
    # How long a site whose TLS broke is remembered (None: not at all); meanwhile
    # Opportunistic sends in plaintext and Required fails saying why.
    remember_broken_tls_s: float | None = None
    # Opportunistic TLS whose handshake (or the EHLO after it) fails: reconnect to the
    # same host with TLS disabled rather than moving to the next host.
    opportunistic_tls_reconnect_on_failed_handshake: bool = False
    # Outbound AUTH PLAIN: never without TLS unless allowed, never over an
    # unverified certificate unless allowed.
    smtp_auth_plain_username: str | None = None
    smtp_auth_plain_password: KeySource | None = None
    tls_certificate: KeySource | None = None
    tls_private_key: KeySource | None = None
    openssl_cipher_list: str | None = None
    openssl_options: tuple[str, ...] = ()
    use_lmtp: bool = False  # LMTP (RFC 2033): LHLO, and a reply per recipient after the message
    allow_smtp_auth_plain_without_tls: bool = False
    allow_smtp_auth_plain_without_valid_certificate: bool = False
    ehlo_domain: str | None = None
    # Provider-wide limits, shared by every ready queue of the provider from one source
    # (KumoMTA keys them by provider and source).
    provider: str | None = None
    provider_connection_limit: int | None = None
    provider_connection_limit_local: bool = False
    provider_max_message_rate: Rate | None = None
    # How often the pool may pick this source for any site of the provider (one rate per
    # provider and source, KumoMTA's "shaping-provider-NAME-SOURCE-selection-rate").
    provider_source_selection_rate: Rate | None = None
    # KumoMTA's named limits, shared by every path that names them (name, limit).
    additional_connection_limits: tuple[tuple[str, Limit], ...] = ()
    additional_message_rate_throttles: tuple[tuple[str, Rate], ...] = ()
    # How often the pool may pick this path's source (IP warm-up); named ones too.
    source_selection_rate: Rate | None = None
    additional_source_selection_rates: tuple[tuple[str, Rate], ...] = ()
    extra: dict[str, object] = field(default_factory=dict, compare=False, hash=False)

    @property
    def client_tls(self) -> ClientTls:
        return ClientTls(self.tls_certificate, self.tls_private_key, self.openssl_cipher_list, self.openssl_options)

    def is_prohibited(self, address: str) -> bool:
        return _in_networks(address, self.prohibited_hosts)

    def is_skipped(self, address: str) -> bool:
        return _in_networks(address, self.skip_hosts)


def _in_networks(address: str, networks: tuple[Network, ...]) -> bool:
    if not networks:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)
