from trimta.core.trace import received_header, with_protocol


def test_protocol_keywords_follow_rfc3848():
    assert with_protocol(False, False, False) == "SMTP"
    assert with_protocol(True, False, False) == "ESMTP"
    assert with_protocol(True, True, False) == "ESMTPS"
    assert with_protocol(True, False, True) == "ESMTPA"
    assert with_protocol(True, True, True) == "ESMTPSA"
    assert with_protocol(True, False, False, smtputf8=True) == "UTF8SMTP"
    assert with_protocol(True, True, True, smtputf8=True) == "UTF8SMTPSA"


def test_received_header_names_client_server_and_single_recipient():
    header = received_header(
        helo="client.example", peer_address="127.0.0.5", by_host="mx.example",
        protocol="ESMTPS", message_id="abc123", recipients=["u@d.example"], now=0, tls_version="TLSv1.3",
    )
    assert header == (
        b"Received: from client.example ([127.0.0.5])\r\n"
        b"\tby mx.example (trimta) with ESMTPS (TLSv1.3) id abc123\r\n"
        b"\tfor <u@d.example>; Thu, 01 Jan 1970 00:00:00 GMT\r\n"
    )


def test_received_header_omits_for_with_several_recipients_and_sanitises_helo():
    header = received_header(
        helo="evil)\r\nX-Injected: 1", peer_address="::1", by_host="mx", protocol="ESMTP",
        message_id="id", recipients=["a@x", "b@x"], now=0,
    )
    assert b"for <" not in header
    assert b"\r\nX-Injected" not in header
    assert b"[IPv6:::1]" in header
