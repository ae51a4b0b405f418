"""The SMTP client's three kinds of failure, and who is to blame for each.

- `ClientProtocolError`: the server broke the protocol (a malformed, oversized or
  unexpected reply). The connection is finished; what was in flight is a transient
  failure.
- `ClientUsageError`: the caller asked for something the session state does not
  allow. A bug in the shell, never the server's doing.
- `MessageNotSendable`: this server cannot take this message at all (over its SIZE,
  or needing SMTPUTF8 it lacks). The caller bounces it with the `Reply` it carries.
"""

from __future__ import annotations

from trimta.protocol.replies import Reply


class ClientProtocolError(Exception):
    """The server broke the SMTP protocol; the connection cannot be trusted any more."""


class ClientUsageError(Exception):
    """The caller asked for something the SMTP state does not allow; a bug in the shell."""


class MessageNotSendable(Exception):
    """This server cannot take this message at all; the caller bounces it with `reply`."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply
