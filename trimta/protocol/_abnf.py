"""SMTP grammar as regexes, each next to the ABNF it implements.

The rules come from RFC 5321 section 4.1.2 (command arguments) and 4.1.3 (address
literals), RFC 5322 section 3.2.3 (atext), and RFC 6531 section 3.3, which lets
internationalized addresses carry UTF8-non-ascii in atext, qtextSMTP, sub-domains and
esmtp-values. The regexes work on `str` decoded from UTF-8, so UTF8-non-ascii is any
code point from U+0080 up.

Only `re` and `ipaddress` here: address literals are checked by the standard library
rather than by a hand-written IPv6 grammar.
"""

from __future__ import annotations

import ipaddress
import re

# UTF8-non-ascii = UTF8-2 / UTF8-3 / UTF8-4                       ; RFC 6531 3.3
_U = "\u0080-\U0010ffff"

# Let-dig    = ALPHA / DIGIT
# Ldh-str    = *( ALPHA / DIGIT / "-" ) Let-dig
# sub-domain = Let-dig [Ldh-str]
# sub-domain =/ U-label                                             ; RFC 6531
_LET_DIG = f"[A-Za-z0-9{_U}]"
SUB_DOMAIN = f"{_LET_DIG}(?:[-A-Za-z0-9{_U}]*{_LET_DIG})?"

# Domain = sub-domain *("." sub-domain)
DOMAIN = rf"{SUB_DOMAIN}(?:\.{SUB_DOMAIN})*"

# address-literal = "[" ( IPv4-address-literal / IPv6-address-literal /
#                         General-address-literal ) "]"
# dcontent        = %d33-90 / %d94-126
# The content is captured loosely here and checked by `valid_address_literal`.
ADDRESS_LITERAL = r"\[[\x21-\x5a\x5e-\x7e]+\]"

# atext = ALPHA / DIGIT / "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" /
#         "/" / "=" / "?" / "^" / "_" / "`" / "{" / "|" / "}" / "~"  ; RFC 5322
# atext =/ UTF8-non-ascii                                           ; RFC 6531
# Atom       = 1*atext
# Dot-string = Atom *("." Atom)
_ATOM = f"[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~{_U}-]+"
DOT_STRING = rf"{_ATOM}(?:\.{_ATOM})*"

# Quoted-string   = DQUOTE *QcontentSMTP DQUOTE
# QcontentSMTP    = qtextSMTP / quoted-pairSMTP
# quoted-pairSMTP = %d92 %d32-126
# qtextSMTP       = %d32-33 / %d35-91 / %d93-126
# qtextSMTP       =/ UTF8-non-ascii                                 ; RFC 6531
QUOTED_STRING = rf'"(?:[\x20\x21\x23-\x5b\x5d-\x7e{_U}]|\\[\x20-\x7e])*"'

# Local-part = Dot-string / Quoted-string
# Mailbox    = Local-part "@" ( Domain / address-literal )
LOCAL_PART = f"(?:{DOT_STRING}|{QUOTED_STRING})"
MAILBOX = f"(?P<local>{LOCAL_PART})@(?:(?P<domain>{DOMAIN})|(?P<literal>{ADDRESS_LITERAL}))"

# At-domain = "@" Domain
# A-d-l     = At-domain *( "," At-domain )      ; source route, obsolete: ignored
# Path      = "<" [ A-d-l ":" ] Mailbox ">"
ADL = f"@{DOMAIN}(?:,@{DOMAIN})*"
PATH = re.compile(f"<(?:{ADL}:)?(?P<mailbox>{MAILBOX})>")

# Recipient of the special case: "<Postmaster>" without a domain (RFC 5321 4.1.1.3).
POSTMASTER = re.compile(r"<(?P<mailbox>postmaster)>", re.IGNORECASE)

# Where a path ends is found before it is validated, so a malformed address gets an
# address error rather than a generic one: "<", then quoted strings or anything but
# ">" and DQUOTE, then ">".
PATH_TOKEN = r'<(?:"(?:[^"\\]|\\.)*"|[^>"])*>'

# Mail-parameters = esmtp-param *(SP esmtp-param)
# esmtp-param     = esmtp-keyword ["=" esmtp-value]
# esmtp-keyword   = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
# esmtp-value     = 1*(%d33-60 / %d62-126)
# esmtp-value     =/ UTF8-non-ascii                                 ; RFC 6531
ESMTP_PARAM = re.compile(f"(?P<keyword>[A-Za-z0-9][A-Za-z0-9-]*)(?:=(?P<value>[\\x21-\\x3c\\x3e-\\x7e{_U}]+))?")

# mail = "MAIL FROM:" Reverse-path [SP Mail-parameters] CRLF
# rcpt = "RCPT TO:" ( "<Postmaster@" Domain ">" / "<Postmaster>" / Forward-path )
#        [SP Rcpt-parameters] CRLF
# A space after the colon is tolerated: many clients send one.
MAIL_ARGUMENT = re.compile(f"FROM: ?(?P<path>{PATH_TOKEN})(?P<params>(?: .*)?)", re.IGNORECASE | re.DOTALL)
RCPT_ARGUMENT = re.compile(f"TO: ?(?P<path>{PATH_TOKEN})(?P<params>(?: .*)?)", re.IGNORECASE | re.DOTALL)

# bdat-cmd   = "BDAT" SP chunk-size [ SP end-marker ] CR LF        ; RFC 3030
# chunk-size = 1*DIGIT
# end-marker = "LAST"
BDAT_ARGUMENT = re.compile(r"(?P<size>[0-9]{1,20})(?: +(?P<last>LAST))? *", re.IGNORECASE)

# AUTH mechanism [SP initial-response]                              ; RFC 4954 4
# sasl-mech = 1*20mech-char; mech-char = UPPER-ALPHA / DIGIT / "-" / "_" ; RFC 4422 3.1
AUTH_ARGUMENT = re.compile(r"(?P<mechanism>[A-Za-z0-9_-]{1,20})(?: +(?P<initial>\S+))? *")

# HELO/EHLO argument: a Domain or address-literal by the RFC, but real clients send
# all sorts (bare host names with underscores, NetBIOS names), and refusing them helps
# nobody; anything printable without spaces is taken.
HELO_NAME = re.compile(f"[\\x21-\\x7e{_U}]+")


def valid_address_literal(literal: str) -> bool:
    """Whether "[...]" is an address literal of RFC 5321 4.1.3.

    IPv4-address-literal = Snum 3("." Snum)
    IPv6-address-literal = "IPv6:" IPv6-addr
    General-address-literal = Standardized-tag ":" 1*dcontent
    """
    inner = literal[1:-1]
    if inner[:5].upper() == "IPV6:":
        try:
            ipaddress.IPv6Address(inner[5:])
        except ValueError:
            return False
        return True
    if re.fullmatch(r"[0-9.]+", inner):
        try:
            ipaddress.IPv4Address(inner)
        except ValueError:
            return False
        return True
    return re.fullmatch(r"[A-Za-z0-9-]*[A-Za-z0-9]:[\x21-\x5a\x5e-\x7e]+", inner) is not None


def parse_path(path: str) -> str | None:
    """The mailbox of a Path (source route dropped), or None if it is not one."""
    m = PATH.fullmatch(path)
    if m is None:
        return None
    literal = m.group("literal")
    if literal is not None and not valid_address_literal(literal):
        return None
    return m.group("mailbox")
