"""Reports as real mail systems send them, for tests: DSNs shaped as Postfix's, Exim's,
Gmail's and RFC 3464's example; RFC 5965's feedback report example (its appendix B.2).

The returned messages were sent through trimta (their ``Received: ... (trimta) ... id``
header) with ``X-Tenant``/``X-Campaign`` or KumoMTA's supplemental trace header.
"""

from __future__ import annotations

import base64
import json

TRIMTA_ID = "00062c1a2b3c4d5ea1b2c3d4"
# KumoMTA's supplemental trace header: base64 of {"_@_": "\\_/", "recipient": ..., meta}.
KUMOREF = base64.b64encode(json.dumps(
    {"_@_": "\\_/", "recipient": "gone@exim.example", "tenant": "acme", "campaign": "winter"}).encode()).decode()


def crlf(text: str) -> bytes:
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode()


POSTFIX = crlf(f"""\
Return-Path: <>
Date: Thu,  3 Dec 2026 19:01:02 +0000 (UTC)
From: MAILER-DAEMON@mx.remote.example (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: bounces@bounce.example.com
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="4F1A2B3C4D.1796324462/mx.remote.example"
Content-Transfer-Encoding: 8bit
Message-Id: <20261203190102.4F1A2B3C4D@mx.remote.example>

This is a MIME-encapsulated message.

--4F1A2B3C4D.1796324462/mx.remote.example
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.remote.example.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients. It's attached below.

<nobody@remote.example>: host mailstore.remote.example[10.1.2.3] said: 550
    5.1.1 <nobody@remote.example>: Recipient address rejected: User unknown in
    local recipient table (in reply to RCPT TO command)

--4F1A2B3C4D.1796324462/mx.remote.example
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.remote.example
X-Postfix-Queue-ID: 4F1A2B3C4D
X-Postfix-Sender: rfc822; bounces@bounce.example.com
Arrival-Date: Thu,  3 Dec 2026 19:01:01 +0000 (UTC)

Final-Recipient: rfc822; nobody@remote.example
Original-Recipient: rfc822;Nobody@remote.example
Action: failed
Status: 5.1.1
Remote-MTA: dns; mailstore.remote.example
Diagnostic-Code: smtp; 550 5.1.1 <nobody@remote.example>: Recipient address
    rejected: User unknown in local recipient table

Final-Recipient: rfc822; later@remote.example
Action: delayed
Status: 4.4.1
Diagnostic-Code: X-Postfix; connect to mailstore.remote.example[10.1.2.3]:25:
    Connection timed out

--4F1A2B3C4D.1796324462/mx.remote.example
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers
Content-Transfer-Encoding: 8bit

Received: from mta1.example.com (mta1.example.com [192.0.2.10])
\tby mx.remote.example (Postfix) with ESMTPS id 4F1A2B3C4D
\tfor <nobody@remote.example>; Thu,  3 Dec 2026 19:01:01 +0000 (UTC)
Received: from app.example.com ([192.0.2.99])
\tby mta1.example.com (trimta) with ESMTPA id {TRIMTA_ID}
\tfor <nobody@remote.example>; Thu, 03 Dec 2026 19:01:00 GMT
X-Tenant: acme
X-Campaign: december-news
From: news@example.com
To: nobody@remote.example
Subject: December news
Message-ID: <news-1234@example.com>

--4F1A2B3C4D.1796324462/mx.remote.example--
""")

EXIM = crlf(f"""\
From: Mail Delivery System <Mailer-Daemon@mx.exim.example>
To: bounces@bounce.example.com
Subject: Mail delivery failed: returning message to sender
Message-Id: <E1tIxyz-000abc-Zz@mx.exim.example>
Date: Thu, 03 Dec 2026 19:05:00 +0000
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary=1796324700-eximdsn-1804289383
Content-Transfer-Encoding: 7bit
Auto-Submitted: auto-replied

This is a MIME-formatted message.  If you see this text it means that your
E-mail software does not support MIME-formatted messages.

--1796324700-eximdsn-1804289383
Content-type: text/plain; charset=us-ascii

This message was created automatically by mail delivery software.

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  gone@exim.example
    host mail.exim.example [198.51.100.7]
    SMTP error from remote mail server after RCPT TO:<gone@exim.example>:
    550 5.2.1 Mailbox disabled

--1796324700-eximdsn-1804289383
Content-type: message/delivery-status

Reporting-MTA: dns; mx.exim.example

Action: failed
Final-Recipient: rfc822;gone@exim.example
Status: 5.0.0
Remote-MTA: dns; mail.exim.example
Diagnostic-Code: smtp; 550 5.2.1 Mailbox disabled

--1796324700-eximdsn-1804289383
Content-type: message/rfc822

Return-path: <bounces@bounce.example.com>
Received: from [192.0.2.10] (helo=mta1.example.com)
\tby mx.exim.example with esmtps (TLS1.3) id 1tIxyw-000abc-Yy
\tfor gone@exim.example; Thu, 03 Dec 2026 19:04:59 +0000
X-KumoRef: {KUMOREF[:40]}
 {KUMOREF[40:]}
From: news@example.com
To: gone@exim.example
Subject: Winter sale
Message-ID: <winter-1@example.com>

The sale is on.

--1796324700-eximdsn-1804289383--
""")

GMAIL = crlf("""\
Return-Path: <>
From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>
To: bounces@bounce.example.com
Auto-Submitted: auto-replied
Subject: Delivery Status Notification (Failure)
References: <news-77@example.com>
In-Reply-To: <news-77@example.com>
X-Failed-Recipients: nosuchuser@gmail.com
Message-ID: <6751a2b3.abc@mx.google.com>
Date: Thu, 03 Dec 2026 11:10:00 -0800 (PST)
MIME-Version: 1.0
Content-Type: multipart/report; boundary="000000000000a1b2c3d4e5f6"; report-type=delivery-status

--000000000000a1b2c3d4e5f6
Content-Type: multipart/related; boundary="000000000000a1b2c3d4e5f7"

--000000000000a1b2c3d4e5f7
Content-Type: text/plain; charset="UTF-8"

** Address not found **

Your message wasn't delivered to nosuchuser@gmail.com because the address
couldn't be found, or is unable to receive mail.

--000000000000a1b2c3d4e5f7--
--000000000000a1b2c3d4e5f6
Content-Type: message/delivery-status

Reporting-MTA: dns; googlemail.com
Received-From-MTA: dns; mta1.example.com
Arrival-Date: Thu, 03 Dec 2026 11:09:59 -0800 (PST)
X-Original-Message-ID: <news-77@example.com>

Final-Recipient: rfc822; nosuchuser@gmail.com
Action: failed
Status: 5.1.1
Diagnostic-Code: smtp; 550-5.1.1 The email account that you tried to reach does not exist. Please try
 550-5.1.1 double-checking the recipient's email address for typos or
 550-5.1.1 unnecessary spaces. For more information, go to
 550 5.1.1  https://support.google.com/mail/?p=NoSuchUser a1si2 - gsmtp
Last-Attempt-Date: Thu, 03 Dec 2026 11:10:00 -0800 (PST)

--000000000000a1b2c3d4e5f6
Content-Type: message/rfc822

From: news@example.com
To: nosuchuser@gmail.com
Subject: News
Message-ID: <news-77@example.com>

Hello
--000000000000a1b2c3d4e5f6--
""")

# RFC 3464 appendix C's second example, shortened.
RFC3464 = crlf("""\
Date: Fri, 8 Jul 1994 09:21:47 -0400
From: Mail Delivery Subsystem <MAILER-DAEMON@CS.UTK.EDU>
Subject: Returned mail: User unknown
To: <owner-ups-mib@CS.UTK.EDU>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
    boundary="JAA13167.773673707/CS.UTK.EDU"

--JAA13167.773673707/CS.UTK.EDU
content-type: text/plain; charset=us-ascii

   ----- The following addresses had delivery problems -----
<arathib@vnet.ibm.com>  (unrecoverable error)
<wsnell@sdcc13.ucsd.edu>  (unrecoverable error)

--JAA13167.773673707/CS.UTK.EDU
content-type: message/delivery-status

Reporting-MTA: dns; cs.utk.edu

Original-Recipient: rfc822;arathib@vnet.ibm.com
Final-Recipient: rfc822;arathib@vnet.ibm.com
Action: failed
Status: 5.0.0 (permanent failure)
Diagnostic-Code: smtp; 550 'arathib@vnet.IBM.COM' is not a
    registered gateway user
Remote-MTA: dns; vnet.ibm.com

Original-Recipient: rfc822;johnh@hpnjld.njd.hp.com
Final-Recipient: rfc822;johnh@hpnjld.njd.hp.com
Action: delayed
Status: 4.0.0 (hpnjld.njd.jp.com: host name lookup failure)

Original-Recipient: rfc822;wsnell@sdcc13.ucsd.edu
Final-Recipient: rfc822;wsnell@sdcc13.ucsd.edu
Action: failed
Status: 5.0.0
Diagnostic-Code: smtp; 550 user unknown
Remote-MTA: dns; sdcc13.ucsd.edu

--JAA13167.773673707/CS.UTK.EDU
content-type: message/rfc822

[original message goes here]

--JAA13167.773673707/CS.UTK.EDU--
""")

# RFC 5965 appendix B.2.
RFC5965 = crlf("""\
From: <abusedesk@example.com>
Date: Thu, 8 Mar 2005 17:40:36 EDT
Subject: FW: Earn money
To: <abuse@example.net>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report;
     boundary="part1_13d.2e68ed54_boundary"

--part1_13d.2e68ed54_boundary
Content-Type: text/plain; charset="US-ASCII"
Content-Transfer-Encoding: 7bit

This is an email abuse report for an email message received from IP
192.0.2.1 on Thu, 8 Mar 2005 14:00:00 EDT.  For more information
about this format please see http://www.mipassoc.org/arf/.

--part1_13d.2e68ed54_boundary
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: SomeGenerator/1.0
Version: 1
Original-Mail-From: <somespammer@example.net>
Original-Rcpt-To: <user@example.com>
Arrival-Date: Thu, 8 Mar 2005 14:00:00 EDT
Reporting-MTA: dns; mail.example.com
Source-IP: 192.0.2.1
Authentication-Results: mail.example.com;
               spf=fail smtp.mail=somespammer@example.com
Reported-Domain: example.net
Reported-Uri: http://example.net/earn_money.html
Reported-Uri: mailto:user@example.com
Removal-Recipient: user@example.com

--part1_13d.2e68ed54_boundary
Content-Type: message/rfc822
Content-Disposition: inline

From: <somespammer@example.net>
Received: from mailserver.example.net (mailserver.example.net
     [192.0.2.1]) by example.com with ESMTP id M63d4137594e46;
     Thu, 08 Mar 2005 14:00:00 -0400
To: <Undisclosed Recipients>
Subject: Earn money
MIME-Version: 1.0
Content-type: text/plain
Message-ID: 8787KJKJ3K4J3K4J3K4J3.mail@example.net
Date: Thu, 02 Sep 2004 12:31:03 -0500

Spam Spam Spam
Spam Spam Spam
Spam Spam Spam
Spam Spam Spam
--part1_13d.2e68ed54_boundary--
""")

# A complaint as a mailbox provider's feedback loop sends it (Yahoo-shaped), about mail
# sent through trimta, the report base64-encoded.
_FBL_REPORT = base64.encodebytes(crlf("""\
Feedback-Type: abuse
User-Agent: Yahoo!-Mail-Feedback/2.0
Version: 0.1
Original-Mail-From: <bounces@bounce.example.com>
Original-Rcpt-To: <reader@yahoo.example>
Received-Date: Thu, 03 Dec 2026 18:00:00 +0000
Reported-Domain: example.com
Authentication-Results: authentication result string is not available
Incidents: 3
""")).decode()
FBL = crlf(f"""\
From: feedback@arf.mail.yahoo.example
To: fbl@fbl.example.com
Subject: FW: Winter sale
Date: Thu, 03 Dec 2026 18:30:00 +0000
MIME-Version: 1.0
Content-Type: multipart/report; report-type="feedback-report"; boundary="----=_Part_1"

------=_Part_1
Content-Type: text/plain

This is an email abuse report.

------=_Part_1
Content-Type: message/feedback-report
Content-Transfer-Encoding: base64

{_FBL_REPORT}
------=_Part_1
Content-Type: text/rfc822-headers

Received: from app.example.com ([192.0.2.99])
\tby mta1.example.com (trimta) with ESMTP id {TRIMTA_ID}
\tfor <reader@yahoo.example>; Thu, 03 Dec 2026 17:59:59 GMT
X-KumoRef: {KUMOREF}
From: news@example.com
To: reader@yahoo.example
Subject: Winter sale
Message-ID: <winter-2@example.com>
------=_Part_1--
""")

PLAIN = crlf("""\
From: someone@example.org
To: bounces@bounce.example.com
Subject: not a report

Just a message.
""")
