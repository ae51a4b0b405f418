"""Bounce classification: which of KumoMTA's categories a failure reply falls in.

Receivers word the same refusal in many ways ("User unknown", "No such user",
"The email account that you tried to reach does not exist") and use the same
enhanced code for different things (Yahoo answers ``5.7.9``, RFC 3463's
"authentication mechanism is too weak", to mean "policy"). Senders need a small,
stable set of categories to act on: remove the address, fix authentication, slow
down, contact the provider. The categories are KumoMTA's, so log consumers
written for KumoMTA's ``bounce_classification`` field read ours unchanged.

`RULES` is the table, ours, as data: tried in order, first match wins.

1. Text rules first: the words of a reply are more specific than its code
   ("550 5.7.1 ... listed at Spamhaus" is a SpamBlock, not a generic 5.7.1).
2. Then enhanced status code rules (RFC 3463 and the IANA registry, RFC 5248).
3. What nothing matched: ``TransientFailure`` for a 4xx reply, ``Uncategorized``
   for a 5xx one.

Every reply is classified, transient ones included (a ``452 4.2.2`` is a
QuotaIssue whether or not it becomes a bounce).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from trimta.protocol.replies import Reply

# KumoMTA's predefined bounce classes, with what each means.
INVALID_RECIPIENT = "InvalidRecipient"  # the recipient address does not exist
DNS_FAILURE = "DNSFailure"  # the destination's DNS failed
SPAM_BLOCK = "SpamBlock"  # the sender (IP, domain) is blocked as a source of spam
SPAM_CONTENT = "SpamContent"  # this message was judged to be spam
PROHIBITED_ATTACHMENT = "ProhibitedAttachment"
RELAY_DENIED = "RelayDenied"  # the host does not accept mail for that domain
AUTO_REPLY = "AutoReply"  # out-of-office mail (from inbound processing, not SMTP replies)
TRANSIENT_FAILURE = "TransientFailure"  # delayed; will be retried
SUBSCRIBE = "Subscribe"  # list requests (inbound processing only)
UNSUBSCRIBE = "Unsubscribe"
CHALLENGE_RESPONSE = "ChallengeResponse"
BAD_CONFIGURATION = "BadConfiguration"  # the receiving host is misconfigured
BAD_CONNECTION = "BadConnection"  # the connection broke (reset, TLS failure)
BAD_DOMAIN = "BadDomain"  # the recipient domain does not exist or takes no mail
CONTENT_RELATED = "ContentRelated"  # refused for its content (size, format), not as spam
INACTIVE_MAILBOX = "InactiveMailbox"  # the address existed but is disabled or closed
INVALID_SENDER = "InvalidSender"  # the envelope sender was refused
MESSAGE_EXPIRED = "MessageExpired"  # it waited longer than max_age
NO_ANSWER_FROM_HOST = "NoAnswerFromHost"  # no connection could be made
POLICY_RELATED = "PolicyRelated"  # refused by the receiver's policy (DMARC, SPF, volume)
PROTOCOL_ERRORS = "ProtocolErrors"  # the SMTP conversation went wrong
QUOTA_ISSUES = "QuotaIssues"  # the mailbox or the receiving system is full
RELAYING_ISSUES = "RelayingIssues"
ROUTING_ERRORS = "RoutingErrors"  # loops, unroutable addresses
SPAM_RELATED = "SpamRelated"  # spam, without saying whether sender or content
VIRUS_RELATED = "VirusRelated"
AUTHENTICATION_FAILED = "AuthenticationFailed"
TOO_MANY_RECIPIENTS = "TooManyRecipients"
UNCATEGORIZED = "Uncategorized"

CATEGORIES: tuple[str, ...] = (
    INVALID_RECIPIENT, DNS_FAILURE, SPAM_BLOCK, SPAM_CONTENT, PROHIBITED_ATTACHMENT,
    RELAY_DENIED, AUTO_REPLY, TRANSIENT_FAILURE, SUBSCRIBE, UNSUBSCRIBE,
    CHALLENGE_RESPONSE, BAD_CONFIGURATION, BAD_CONNECTION, BAD_DOMAIN, CONTENT_RELATED,
    INACTIVE_MAILBOX, INVALID_SENDER, MESSAGE_EXPIRED, NO_ANSWER_FROM_HOST,
    POLICY_RELATED, PROTOCOL_ERRORS, QUOTA_ISSUES, RELAYING_ISSUES, ROUTING_ERRORS,
    SPAM_RELATED, VIRUS_RELATED, AUTHENTICATION_FAILED, TOO_MANY_RECIPIENTS, UNCATEGORIZED,
)


@dataclass(frozen=True, slots=True)
class Rule:
    """One line of the table: when a reply matches every condition given, `category`.

    - `text`: a regular expression searched, case-insensitively, in the reply's
      text (its lines joined by spaces, without codes);
    - `enhanced`: an enhanced code pattern, ``"5.1.1"``, with ``*`` for any part
      (``"*.2.2"``, ``"5.7.*"``);
    - `code`: a prefix of the three-digit reply code (``"4"``, ``"55"``).
    """

    category: str
    text: str | None = None
    enhanced: str | None = None
    code: str | None = None


def _t(category: str, *patterns: str, code: str | None = None) -> Rule:
    return Rule(category, text="|".join(f"(?:{p})" for p in patterns), code=code)


def _e(category: str, *codes: str) -> tuple[Rule, ...]:
    return tuple(Rule(category, enhanced=c) for c in codes)


# The order matters: earlier rules are the more specific ones (see the module doc).
RULES: tuple[Rule, ...] = (
    # --- What the words say. ------------------------------------------------------
    _t(RELAY_DENIED,
       r"relay(?:ing)? (?:access )?(?:is )?(?:denied|not (?:permitted|allowed|authori[sz]ed))",
       r"unable to relay", r"(?:do|does|will) not relay", r"not permitted to relay"),
    _t(VIRUS_RELATED, r"\bvirus", r"malware", r"\binfected\b", r"trojan", r"phishing"),
    _t(PROHIBITED_ATTACHMENT,
       r"attachment", r"(?:file|extension) type", r"(?:executable|prohibited|blocked) (?:file|content)"),
    # Reputation and blocklists: about the sender, whatever the message says.
    _t(SPAM_BLOCK,
       r"block ?list", r"black ?list", r"deny ?list", r"blocked using", r"\bdnsbl\b", r"\brbl\b",
       r"listed (?:at|on|in|by)\b", r"spamhaus", r"spamcop", r"barracuda", r"sorbs",
       r"reputation", r"(?:from|of) your ip", r"originating from your", r"unusual rate",
       r"banned sending ip", r"\bip(?: address)? (?:\S+ )?(?:has been |is |was )?(?:blocked|banned|listed)",
       r"user complaints"),
    _t(SPAM_CONTENT,
       r"(?:looks|appears|detected|identified|classified|considered|scored|rated|suspected|rejected|flagged)"
       r" (?:like |as |to be |as being )?(?:likely )?(?:spam|junk|bulk|unsolicited)",
       r"likely unsolicited", r"unsolicited (?:mail|message|content|bulk)", r"spam ?score",
       r"spamassassin", r"content filter", r"spam content", r"message (?:content )?(?:is|was) spam"),
    _t(TRANSIENT_FAILURE, r"gr[ae]y-?list", code="4"),
    _t(QUOTA_ISSUES,
       r"over ?quota", r"quota (?:exceeded|full)", r"exceed(?:s|ed)? (?:the |its |his |her )?(?:storage|quota)",
       r"mailbox (?:is )?full", r"mailbox size limit", r"(?:insufficient|out of) (?:system )?storage",
       r"(?:user|recipient|mailbox) has (?:exceeded|no (?:more )?space)"),
    _t(INACTIVE_MAILBOX,
       r"(?:account|mailbox|user|address|recipient)(?: that you tried to reach)? (?:is |has been )?"
       r"(?:disabled|inactive|deactivated|suspended|closed|expired|locked|frozen)",
       r"(?:account|mailbox) (?:is )?no longer (?:active|available|in use)",
       r"inactive (?:account|mailbox|user)", r"dormant"),
    _t(INVALID_SENDER,
       r"sender (?:address )?(?:rejected|invalid|unknown|verify failed|verification failed|denied)",
       r"(?:invalid|unknown|bad|unverified) sender", r"sender domain (?:does not exist|not found|must resolve)",
       r"domain of sender address"),
    _t(BAD_DOMAIN,
       r"(?:domain|host) (?:name )?(?:not found|does not exist|unknown)", r"no such domain",
       r"domain \S+ (?:does not exist|not found|has (?:a )?null mx|has no mx)", r"not a valid destination",
       r"unrouteable", r"null mx", r"accepts no mail", r"domain (?:is )?(?:invalid|not valid)"),
    _t(INVALID_RECIPIENT,
       r"n[o']t exist", r"no such (?:user|mailbox|recipient|address|account)",
       r"user(?:name)? (?:unknown|not found|invalid)", r"unknown (?:user|recipient|mailbox|address)",
       r"recipient (?:address )?(?:rejected|unknown|not found|invalid)", r"invalid (?:recipient|mailbox|address)",
       r"(?:mailbox|address|user|recipient) (?:not found|unavailable|invalid)",
       r"not a valid (?:mailbox|recipient|user)",
       r"bad destination mailbox", r"no mailbox", r"undeliverable address", r"address (?:is )?(?:unknown|invalid)"),
    _t(TOO_MANY_RECIPIENTS, r"too many recipients", r"recipient limit"),
    _t(MESSAGE_EXPIRED, r"message (?:has )?expired", r"expired after", r"too old", r"delivery time"),
    _t(POLICY_RELATED,
       r"polic(?:y|ies)", r"\bdmarc\b", r"\bspf\b", r"\bdkim\b", r"unauthenticated",
       r"not authori[sz]ed", r"(?:rate|volume|connection) limit", r"too many (?:messages|connections)",
       r"reverse dns", r"\bptr\b", r"requiretls"),
    _t(AUTHENTICATION_FAILED,
       r"authentication (?:failed|required|credentials)", r"auth(?:entication)? mechanism", r"password"),
    _t(CONTENT_RELATED,
       r"message (?:size|too (?:large|big|long))", r"(?:size|length) exceeds", r"exceeds (?:the )?(?:maximum|size)",
       r"too (?:large|big)", r"content (?:rejected|refused|not accepted)", r"header", r"\bmime\b", r"8-?bit",
       r"line too long"),
    _t(ROUTING_ERRORS, r"\bloop", r"too many hops", r"unable to route", r"no route", r"routing"),
    _t(DNS_FAILURE, r"\bdns\b", r"lookup fail", r"name ?server", r"no address found"),
    _t(NO_ANSWER_FROM_HOST, r"no answer", r"connection (?:refused|timed out)", r"timed out", r"timeout"),
    _t(BAD_CONNECTION,
       r"connection (?:reset|dropped|closed|lost|broken|error)", r"\btls\b", r"\bssl\b", r"handshake",
       r"certificate"),
    _t(PROTOCOL_ERRORS,
       r"syntax error", r"command (?:not recognized|unrecognized)", r"unrecognized command",
       r"bad sequence", r"protocol (?:error|violation)", r"pipelining", r"bare (?:cr|lf)"),
    _t(SPAM_RELATED, r"\bspam", r"\bjunk\b", r"abuse"),
    _t(BAD_CONFIGURATION, r"misconfigur", r"configuration error", r"not configured"),
    # --- What the enhanced code says (RFC 3463, RFC 5248 registry). --------------
    *_e(INVALID_RECIPIENT, "*.1.1", "*.1.3", "*.1.4"),
    *_e(BAD_DOMAIN, "*.1.2", "*.1.10"),
    *_e(INACTIVE_MAILBOX, "*.1.6", "*.2.1", "*.7.18"),
    *_e(INVALID_SENDER, "*.1.7", "*.1.8", "*.7.27"),
    *_e(QUOTA_ISSUES, "*.2.2", "*.3.1"),
    *_e(CONTENT_RELATED, "*.2.3", "*.3.4", "*.6.*", "*.7.7"),
    *_e(BAD_CONNECTION, "*.3.2", "*.4.2"),
    *_e(PROTOCOL_ERRORS, "*.3.3"),
    *_e(BAD_CONFIGURATION, "*.3.5"),
    *_e(NO_ANSWER_FROM_HOST, "*.4.1"),
    *_e(DNS_FAILURE, "*.4.3"),
    *_e(ROUTING_ERRORS, "*.2.4", "*.4.4", "*.4.6", "*.4.0"),
    *_e(TRANSIENT_FAILURE, "4.4.5"),
    *_e(MESSAGE_EXPIRED, "*.4.7"),
    *_e(TOO_MANY_RECIPIENTS, "*.5.3"),
    *_e(PROTOCOL_ERRORS, "*.5.*"),
    *_e(AUTHENTICATION_FAILED, "*.7.8", "*.7.9", "*.7.11", "*.7.12", "*.7.13", "*.7.14"),
    *_e(SPAM_BLOCK, "*.7.28"),
    *_e(POLICY_RELATED, "*.7.*"),
)


class Classifier:
    """A compiled rule table. Build once; `classify` is pure and cached."""

    def __init__(self, rules: tuple[Rule, ...]) -> None:
        for rule in rules:
            if rule.category not in CATEGORIES:
                raise ValueError(f"unknown bounce category {rule.category!r}")
        self.rules = rules
        self._compiled = tuple(
            (
                rule.category,
                re.compile(rule.text, re.IGNORECASE) if rule.text else None,
                _enhanced_pattern(rule.enhanced) if rule.enhanced else None,
                rule.code,
            )
            for rule in rules
        )
        self.classify = lru_cache(maxsize=4096)(self._classify)

    def _classify(self, reply: Reply) -> str:
        text = " ".join(reply.lines)
        code = str(reply.code)
        for category, regex, enhanced, code_prefix in self._compiled:
            if code_prefix is not None and not code.startswith(code_prefix):
                continue
            if enhanced is not None and not _enhanced_matches(enhanced, reply.enhanced):
                continue
            if regex is not None and not regex.search(text):
                continue
            return category
        return TRANSIENT_FAILURE if reply.is_transient else UNCATEGORIZED


def _enhanced_pattern(text: str) -> tuple[int | None, ...]:
    parts = text.split(".")
    if len(parts) != 3:
        raise ValueError(f"enhanced code pattern must have three parts, got {text!r}")
    return tuple(None if p == "*" else int(p) for p in parts)


def _enhanced_matches(pattern: tuple[int | None, ...], enhanced: tuple[int, int, int] | None) -> bool:
    if enhanced is None:
        return False
    return all(p is None or p == e for p, e in zip(pattern, enhanced, strict=True))


DEFAULT_CLASSIFIER = Classifier(RULES)


def classify(reply: Reply) -> str:
    """The KumoMTA bounce category of a failure `reply`, by the default `RULES`."""
    return DEFAULT_CLASSIFIER.classify(reply)
