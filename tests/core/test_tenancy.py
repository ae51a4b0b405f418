from hypothesis import given
from hypothesis import strategies as st

from trimta.core.tenancy import extract_tenancy, header_section_end

MESSAGE = (
    b"Subject: hello\r\n"
    b"X-Tenant: acme\r\n"
    b"X-Campaign: spring\r\n"
    b" sale\r\n"
    b"From: a@example.com\r\n"
    b"\r\n"
    b"X-Tenant: not-a-header\r\n"
)


def test_tenant_and_campaign_read_from_headers_and_removed():
    found = extract_tenancy(MESSAGE, "X-Tenant", "X-Campaign", remove=True)
    assert (found.tenant, found.campaign) == ("acme", "spring sale")
    assert found.data == b"Subject: hello\r\nFrom: a@example.com\r\n\r\nX-Tenant: not-a-header\r\n"


def test_headers_kept_when_configured():
    found = extract_tenancy(MESSAGE, "X-Tenant", "X-Campaign", remove=False)
    assert found.tenant == "acme"
    assert found.data is MESSAGE


def test_header_names_are_case_insensitive_and_configurable():
    data = b"x-customer: Globex\r\n\r\nbody\r\n"
    found = extract_tenancy(data, "X-Customer", "X-Campaign", remove=True)
    assert found.tenant == "Globex"
    assert found.campaign is None
    assert found.data == b"\r\nbody\r\n"


def test_body_lookalike_is_not_a_tenant():
    data = b"Subject: x\r\n\r\nX-Tenant: evil\r\n"
    found = extract_tenancy(data, "X-Tenant", "X-Campaign", remove=True)
    assert found.tenant is None
    assert found.data is data


def test_header_section_end():
    assert header_section_end(b"A: b\r\n\r\nbody") == 8
    assert header_section_end(b"\r\nbody") == 2
    assert header_section_end(b"A: b\r\n") == 6


@given(st.binary(max_size=300), st.text(alphabet="abcdefghij-", min_size=1, max_size=10))
def test_extraction_never_raises_and_only_shrinks(data, name):
    found = extract_tenancy(data, "X-" + name, "X-Campaign", remove=True)
    assert len(found.data) <= len(data)
