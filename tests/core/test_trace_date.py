"""The Received header's date follows the clock, second by second."""

from trimta.core.trace import received_header


def _date(now: float) -> bytes:
    header = received_header(helo="c", peer_address="127.0.0.1", by_host="mx", protocol="ESMTP",
                             message_id="id", recipients=["a@x"], now=now)
    return header.rsplit(b"; ", 1)[1]


def test_each_message_gets_the_date_of_its_own_second():
    assert _date(0.9) == b"Thu, 01 Jan 1970 00:00:00 GMT\r\n"
    assert _date(86_400.0) == b"Fri, 02 Jan 1970 00:00:00 GMT\r\n"
    assert _date(86_401.5) == b"Fri, 02 Jan 1970 00:00:01 GMT\r\n"
    assert _date(0.0) == b"Thu, 01 Jan 1970 00:00:00 GMT\r\n"
