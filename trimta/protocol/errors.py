"""The protocol layer's one error boundary.

Code that drives a state machine wrongly (asks for the next event while one still
awaits its reply, sends a reply nothing asked for) gets `LocalProtocolError`: that is
a bug in the caller, never something a peer can cause. What a peer gets wrong is not
raised out of the machine at all; inside, the parsers raise `RemoteProtocolError`
carrying the `Reply` to answer, and the machine turns it into an event.
"""

from __future__ import annotations

from trimta.protocol.replies import Reply


class ProtocolError(Exception):
    """Base of the protocol layer's errors."""


class LocalProtocolError(ProtocolError):
    """Our own side used the state machine in a way the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol; `reply` is what to answer.

    `counts` says whether the refusal counts toward the per-session error cap: syntax
    and sequence errors do, policy outcomes a well-behaved pipelining client can run
    into (too many recipients, message too big) do not.
    """

    def __init__(self, reply: Reply, *, counts: bool = True) -> None:
        super().__init__(str(reply))
        self.reply = reply
        self.counts = counts
