"""What becomes of a message sent to a domain whose listener-domain entry logs reports.

KumoMTA's ``log_oob`` and ``log_arf`` (``listener_domains.toml``): a recipient in such a
domain is taken at RCPT whether or not relaying to it is allowed. Once the message is
in, `decide` says, per recipient, as KumoMTA's listener does:

- a feedback report (RFC 5965) and ``log_arf`` logs: a ``Feedback`` record, then the
  message is queued (``LogThenRelay``) or dropped (``LogThenDrop``);
- else a delivery status notification (RFC 3464) and ``log_oob`` logs: ``OOB``
  records, then queued or dropped likewise;
- else an ordinary message: queued if relaying to the recipient is allowed, refused
  otherwise (``550 5.7.1``, as KumoMTA answers the data then).

SMTP has one reply for the data of every recipient: when some recipient's copy would
be refused, the whole message is (the sender hears of it; nothing is dropped unsaid).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from trimta.core.listener_domains import ReportHandling
from trimta.core.mail_reports import DeliveryReport, FeedbackReport, parse_delivery_report, parse_feedback_report
from trimta.protocol.replies import Reply

RELAYING_NOT_PERMITTED = Reply(550, (5, 7, 1), ("relaying not permitted",))


@dataclass(frozen=True, slots=True)
class RecipientPolicy:
    """One recipient of the message: may it be relayed, and what its domain does with reports."""

    address: str
    relay: bool
    log_oob: ReportHandling = ReportHandling.IGNORE
    log_arf: ReportHandling = ReportHandling.IGNORE


@dataclass(frozen=True, slots=True)
class Decision:
    """`queued`: the recipients to accept as any message; `logged`: those whose report is
    logged (some may be queued too); `refused`: those that may not have it (then nothing
    is accepted). At most one of `feedback` and `delivery` is set: the report logged."""

    queued: tuple[str, ...] = ()
    logged: tuple[str, ...] = ()
    refused: tuple[str, ...] = ()
    feedback: FeedbackReport | None = None
    delivery: DeliveryReport | None = None

    @property
    def dropped(self) -> tuple[str, ...]:
        """The recipients whose report is logged and not queued."""
        return tuple(r for r in self.logged if r not in self.queued)


def decide(recipients: Sequence[RecipientPolicy], data: bytes) -> Decision:
    """What to do with `data` for each of `recipients` (see the module's docstring).

    The message is parsed only as the kinds some recipient logs, and at most once each.
    """
    feedback = parse_feedback_report(data) if any(r.log_arf.logs for r in recipients) else None
    delivery = None
    if feedback is None and any(r.log_oob.logs for r in recipients):
        delivery = parse_delivery_report(data)
    queued: list[str] = []
    logged: list[str] = []
    refused: list[str] = []
    for r in recipients:
        handling = None
        if feedback is not None and r.log_arf.logs:
            handling = r.log_arf
        elif delivery is not None and r.log_oob.logs:
            handling = r.log_oob
        if handling is not None:
            logged.append(r.address)
            if handling is ReportHandling.LOG_THEN_RELAY:
                queued.append(r.address)
        elif r.relay:
            queued.append(r.address)
        else:
            refused.append(r.address)
    return Decision(tuple(queued), tuple(logged), tuple(refused),
                    feedback if logged else None, delivery if logged else None)
