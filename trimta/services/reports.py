"""Taking in a message that may be a report a listener domain logs (``log_oob``, ``log_arf``).

`trimta.core.report_handling.decide` says per recipient what becomes of the message;
`accept_reports` does it: the recipients to queue are accepted as any message (stored
durably, a Reception record each), then the report's records are written (``Feedback``,
or ``OOB`` per failed recipient of a DSN) for every recipient whose domain logs it.
A dropped recipient's copy (``LogThenDrop``) is never stored and has no other record.

Error handling: the records are written only once the reply is 250. If the queued
copies could not be stored, the client gets that 4xx and nothing is logged (it will
send the report again); a message that some recipient may not have is refused whole
(``550 5.7.1``) before anything is stored.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from trimta.core import records
from trimta.core.mail_reports import attribution
from trimta.core.report_handling import RELAYING_NOT_PERMITTED, Decision
from trimta.services.acceptance import Accepted, Receiving, Submission, accepted_reply
from trimta.services.logs import RecordSink


async def accept_reports(acceptor: Receiving, logs: RecordSink, submission: Submission, decision: Decision, *,
                         now: float) -> Accepted:
    """Accept `submission` as `decision` says; the reply to give, and the messages queued."""
    if decision.refused:
        return Accepted(RELAYING_NOT_PERMITTED, ())
    accepted = Accepted(RELAYING_NOT_PERMITTED, ())
    if decision.queued:
        accepted = await acceptor.accept(dataclasses.replace(submission, recipients=decision.queued))
        if not accepted.reply.is_positive:
            return accepted
    by_recipient = {m.recipient: m for m in accepted.messages}
    dropped = decision.dropped
    if dropped:
        unstored = acceptor.unstored(dataclasses.replace(submission, recipients=dropped))
        by_recipient.update((m.recipient, m) for m in unstored)
        if not accepted.messages:
            accepted = Accepted(accepted_reply(unstored[0].data_id), ())
    report = decision.feedback or decision.delivery
    tenancy = acceptor.tenancy
    whose = attribution(report.original if report is not None else None,
                        tenant_header=tenancy.tenant_header, campaign_header=tenancy.campaign_header)
    for recipient in dict.fromkeys(decision.logged):
        message = by_recipient[recipient]
        out: list[dict[str, Any]]
        if decision.feedback is not None:
            out = [records.feedback_record(message, decision.feedback, accepted_reply(message.data_id), now,
                                           session=submission.session, attribution=whose)]
        else:
            assert decision.delivery is not None
            out = records.oob_records(message, decision.delivery, now, peer_address=submission.reception.peer_address,
                                      session=submission.session, attribution=whose)
        for record in out:
            logs.emit(record)
    return accepted
