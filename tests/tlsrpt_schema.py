"""RFC 8460 section 4.4's report format as a JSON schema, written from the RFC's text, for tests.

The RFC gives the format as an annotated JSON template, not as a schema; this is that
template with the section's rules: required fields (organization-name, date-range,
contact-info, report-id, policies; policy-type and policy-domain; both summary counts;
result-type and failed-session-count of each failure detail), RFC 3339 date-times in
UTC, non-negative integer counts, and the result types of section 4.3 (extensions
allowed by section 4.3.4 are strings, so any string is valid; ours are the RFC's).
"""

from __future__ import annotations

import gzip
import json
from typing import Any

import jsonschema

RESULT_TYPES = [
    "starttls-not-supported", "certificate-host-mismatch", "certificate-expired", "certificate-not-trusted",
    "validation-failure", "tlsa-invalid", "dnssec-invalid", "dane-required", "sts-policy-fetch-error",
    "sts-policy-invalid", "sts-webpki-invalid",
]
_COUNT = {"type": "integer", "minimum": 0}
_DATE_TIME = {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$"}

SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "required": ["organization-name", "date-range", "contact-info", "report-id", "policies"],
    "properties": {
        "organization-name": {"type": "string", "minLength": 1},
        "date-range": {
            "type": "object",
            "required": ["start-datetime", "end-datetime"],
            "properties": {"start-datetime": _DATE_TIME, "end-datetime": _DATE_TIME},
        },
        "contact-info": {"type": "string", "minLength": 1},
        "report-id": {"type": "string", "minLength": 1},
        "policies": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["policy", "summary"],
                "properties": {
                    "policy": {
                        "type": "object",
                        "required": ["policy-type", "policy-domain"],
                        "properties": {
                            "policy-type": {"enum": ["tlsa", "sts", "no-policy-found"]},
                            "policy-string": {"type": "array", "items": {"type": "string"}},
                            "policy-domain": {"type": "string", "minLength": 1},
                            "mx-host": {"type": "array", "items": {"type": "string"}},
                        },
                        # section 4.4: the policy as published, for a policy that exists
                        "if": {"properties": {"policy-type": {"enum": ["tlsa", "sts"]}}},
                        "then": {"required": ["policy-string"]},
                    },
                    "summary": {
                        "type": "object",
                        "required": ["total-successful-session-count", "total-failure-session-count"],
                        "properties": {"total-successful-session-count": _COUNT,
                                       "total-failure-session-count": _COUNT},
                    },
                    "failure-details": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["result-type", "failed-session-count"],
                            "properties": {
                                "result-type": {"type": "string", "enum": RESULT_TYPES},
                                "sending-mta-ip": {"type": "string"},
                                "receiving-mx-hostname": {"type": "string"},
                                "receiving-mx-helo": {"type": "string"},
                                "receiving-ip": {"type": "string"},
                                "failed-session-count": _COUNT,
                                "additional-information": {"type": "string"},
                                "failure-reason-code": {"type": "string"},
                            },
                        },
                    },
                },
            },
        },
    },
}


def validate_report(report: Any) -> None:
    """Raise `jsonschema.ValidationError` unless `report` is a valid RFC 8460 report, and
    check what a schema cannot: each summary's failure count is its details' sum."""
    jsonschema.validate(report, SCHEMA)
    for entry in report["policies"]:
        details = entry.get("failure-details", [])
        assert entry["summary"]["total-failure-session-count"] == sum(d["failed-session-count"] for d in details)


def decode_gzip_report(body: bytes) -> Any:
    """A gzipped report's JSON, validated."""
    report = json.loads(gzip.decompress(body))
    validate_report(report)
    return report
