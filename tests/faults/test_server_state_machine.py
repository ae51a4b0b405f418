"""Stateful fuzzing of the sans-IO ESMTP server (hypothesis RuleBasedStateMachine).

A client is modelled as a sequence of steps, each sending a piece of what real and
hostile clients send (commands valid and not, message content with smuggling endings
and NULs, BDAT with wrong sizes, SASL with bad base64, binary junk), in whatever pieces
the network cuts it into. The application side answers every event as the listener
does: with the event's suggested reply, or a refusal (a 452 for a full spool, a 550
for a recipient), and finishes STARTTLS when it accepted it.

Invariants after every step:
- no exception escapes the machine (anything but LocalProtocolError from misuse,
  which this driver never commits, fails the run);
- every event gets exactly one reply, in order: the bytes out are exactly the
  replies given, one after another, each complete;
- the machine's view agrees with the replies: a transaction is open only after a 2xx
  to MAIL, and the recipients are exactly those that got a 2xx since.
At the end, the whole input fed at once to a fresh machine, answered the same way,
gives the same bytes out: how the input was cut changes nothing.
"""

from __future__ import annotations

import base64

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from trimta.protocol import events as ev
from trimta.protocol import replies as R
from trimta.protocol.server import NEED_DATA, ServerConfig, ServerConnection

CONFIG = ServerConfig(hostname="mx.example.net", max_message_size=2000, max_recipients=5, max_errors=40,
                      starttls_available=True, auth_mechanisms=("PLAIN", "LOGIN"), auth_without_tls=True)

COMMANDS = [
    b"EHLO c.example\r\n", b"HELO c.example\r\n", b"MAIL FROM:<a@example.com>\r\n", b"MAIL FROM:<>\r\n",
    b"MAIL FROM:<a@example.com> SIZE=100000\r\n", b"MAIL FROM:<\xc3\xa9@example.com> SMTPUTF8\r\n",
    b"RCPT TO:<b@example.net>\r\n", b"RCPT TO:<\"q@x\"@example.net>\r\n", b"RCPT TO:<@a,@b:c@d.example>\r\n",
    b"RCPT TO:<u%v@example.net>\r\n", b"RCPT TO:<u@[127.0.0.1]>\r\n", b"DATA\r\n", b"RSET\r\n", b"NOOP\r\n",
    b"VRFY root\r\n", b"HELP\r\n", b"STARTTLS\r\n", b"AUTH PLAIN\r\n", b"AUTH LOGIN\r\n",
    b"AUTH PLAIN " + base64.b64encode(b"\0u\0p") + b"\r\n", b"AUTH PLAIN !!!\r\n", b"AUTH CRAM-MD5\r\n",
    b"*\r\n", b"BDAT 10\r\n", b"BDAT 0 LAST\r\n", b"BDAT 99999999999999999999\r\n", b"BDAT -3\r\n",
    b"QUIT\r\n", b"\r\n", b"MAIL\r\n", b"RCPT TO:\r\n", b"EHLO\r\n",
]
CONTENT = [
    b"Subject: x\r\n\r\nbody\r\n", b".\r\n", b"\r\n.\r\n", b"..stuffed\r\n", b"\n.\n", b"\r.\r", b"\r\n\x00.\r\n",
    b"\r\n.\x00\r\n", b"bare\nlf", b"y" * 1100 + b"\r\n", b"\x00\x00", b"\xff\xfe\xfd",
]


def answer_for(event: object, n: int, seed: int) -> R.Reply:
    """The application's answer to the `n`-th event: usually the suggested reply,
    sometimes a refusal. A function of the event and its place only, so a replay of
    the same input is answered alike however it is cut."""
    if (n * 7 + seed) % 5 == 0:
        if isinstance(event, (ev.MailFrom, ev.MessageComplete)):
            return R.reply(452, "4.3.1", "Insufficient system storage")
        if isinstance(event, ev.RcptTo):
            return R.RELAY_DENIED
        if isinstance(event, ev.AuthAttempt):
            return R.AUTH_SUCCEEDED
    return event.reply  # type: ignore[attr-defined]


class Client:
    """The listener's side of one connection: feeds bytes, answers events."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.conn = ServerConnection(CONFIG)
        self.out = bytearray(self.conn.send(self.conn.greeting()))
        self.replies: list[R.Reply] = []  # every reply given, in order (greeting excluded)
        self.mail_open = False
        self.accepted_rcpts = 0
        self.tls_started = False  # during the last feed

    def feed(self, data: bytes) -> None:
        self.tls_started = False
        self.conn.receive_data(data)
        while not self.conn.closed:
            event = self.conn.next_event()
            if event is NEED_DATA or isinstance(event, ev.ConnectionClosed):
                break
            reply = answer_for(event, len(self.replies), self.seed)
            self.replies.append(reply)
            self.out += self.conn.send(reply)
            self._model(event, reply)
            if isinstance(event, ev.StartTls) and reply.code == 220 and not self.conn.closed:
                # The listener does the handshake here; what the client pipelined
                # after STARTTLS in this piece was dropped by the machine.
                self.conn.tls_started("TLSv1.3")
                self.tls_started = True
                self.mail_open, self.accepted_rcpts = False, 0

    def _model(self, event: object, reply: R.Reply) -> None:
        positive = reply.code // 100 == 2
        if isinstance(event, ev.MailFrom) and positive:
            self.mail_open, self.accepted_rcpts = True, 0
        elif isinstance(event, ev.RcptTo) and positive:
            self.accepted_rcpts += 1
        elif isinstance(event, (ev.Reset, ev.Hello, ev.MessageComplete)) or self.conn.mail_from is None:
            # A reset, a new hello, a message, or a refusal that ended the transaction.
            self.mail_open, self.accepted_rcpts = False, 0


class ServerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.client: Client | None = None
        self.groups: list[list[bytes]] = [[]]  # input cut where a TLS handshake happened

    @initialize(seed=st.integers(0, 4))
    def connect(self, seed):
        self.client = Client(seed)

    def _send(self, data: bytes) -> None:
        assert self.client is not None
        if self.client.conn.closed:
            return
        self.groups[-1].append(data)
        self.client.feed(data)
        if self.client.tls_started:
            self.groups.append([])

    @rule(data=st.booleans(), bdat=st.booleans())
    def open_transaction(self, data, bdat):
        self._send(b"EHLO c.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\n"
                   + (b"BDAT 4\r\nab\r\n" if bdat else b"") + (b"DATA\r\n" if data else b""))

    @rule(command=st.sampled_from(COMMANDS))
    def command(self, command):
        self._send(command)

    @rule(commands=st.lists(st.sampled_from(COMMANDS), min_size=2, max_size=12))
    def pipelined(self, commands):
        self._send(b"".join(commands))

    @rule(content=st.lists(st.sampled_from(CONTENT), max_size=6), end=st.booleans())
    def content(self, content, end):
        self._send(b"".join(content) + (b"\r\n.\r\n" if end else b""))

    @rule(size=st.integers(0, 40), last=st.booleans(), body=st.binary(max_size=40))
    def bdat(self, size, last, body):
        self._send(b"BDAT %d%s\r\n" % (size, b" LAST" if last else b"") + body)

    @rule(junk=st.binary(min_size=1, max_size=200))
    def junk(self, junk):
        self._send(junk)

    @rule(command=st.sampled_from(COMMANDS))
    def byte_by_byte(self, command):
        for i in range(len(command)):
            self._send(command[i:i + 1])

    @rule()
    def client_closes(self):
        self._send(b"")

    @invariant()
    def replies_are_the_bytes_out_in_order(self):
        if self.client is None:
            return
        greeting = R.reply(220, None, "mx.example.net ESMTP trimta").to_bytes()
        expected = greeting + b"".join(b"334 \r\n" if r.code == 334 and r.lines == ("",) else r.to_bytes()
                                       for r in self.client.replies)
        assert bytes(self.client.out) == expected

    @invariant()
    def the_machine_agrees_with_the_replies(self):
        if self.client is None or self.client.conn.closed:
            return
        conn = self.client.conn
        assert (conn.mail_from is not None) == self.client.mail_open
        if conn.mail_from is not None:
            assert len(conn.recipients) == self.client.accepted_rcpts

    def teardown(self):
        if self.client is None:
            return
        # The same input fed in as few pieces as the TLS handshakes allow, answered
        # alike: the same bytes out.
        whole = Client(self.client.seed)
        for group in self.groups:
            pieces = b"".join(group)
            if pieces and not whole.conn.closed:
                whole.feed(pieces)
            if group and group[-1] == b"" and not whole.conn.closed:
                whole.feed(b"")
        assert whole.out == self.client.out


TestServerMachine = ServerMachine.TestCase
TestServerMachine.settings = settings(max_examples=300, stateful_step_count=30, deadline=None,
                                      suppress_health_check=[HealthCheck.too_slow])
