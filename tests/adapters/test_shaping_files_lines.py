"""Line numbers of TOML keys, which shaping errors point at."""

from __future__ import annotations

import tomllib

from hypothesis import given, settings
from hypothesis import strategies as st

from trimta.adapters.toml_lines import TomlLines

TEXT = '''# comment with [brackets] and key = value
["default"]
connection_limit = 10 # trailing
note = """
fake = 1
[not.a.header]
"""

["gmail.com".sources."ip-1"]
max_message_rate = "10/s"

[provider."google"]
match = [
    { MXSuffix = ".google.com" },  # first
    # a comment between elements
    { MXSuffix = ".googlemail.com" },
]
sources."ip-2".connection_limit = 3
'quoted literal' = 'x'
"esc\\"aped" = "y"

[[provider."yahoo".automation]]
regex = '\\[TS04\\]'
action = { SetConfig = { name = "max_message_rate", value = "1/min" } }
duration = "2h"

[[provider."yahoo".automation]]
regex = ["a", """b"""]
action = "Suspend"

[provider."yahoo".automation.trigger]
Threshold = "2/h"
'''


def test_every_key_header_and_element_has_its_line():
    lines = TomlLines(TEXT)
    assert tomllib.loads(TEXT)  # the sample is valid TOML
    expected = {
        ("default",): 2,
        ("default", "connection_limit"): 3,
        ("default", "note"): 4,
        ("gmail.com", "sources", "ip-1"): 9,
        ("gmail.com", "sources", "ip-1", "max_message_rate"): 10,
        ("provider", "google"): 12,
        ("provider", "google", "match"): 13,
        ("provider", "google", "match", 0, "MXSuffix"): 14,
        ("provider", "google", "match", 1): 16,
        ("provider", "google", "sources", "ip-2", "connection_limit"): 18,
        ("provider", "google", "quoted literal"): 19,
        ("provider", "google", 'esc"aped'): 20,
        ("provider", "yahoo", "automation", 0): 22,
        ("provider", "yahoo", "automation", 0, "regex"): 23,
        ("provider", "yahoo", "automation", 0, "action", "SetConfig", "value"): 24,
        ("provider", "yahoo", "automation", 0, "duration"): 25,
        ("provider", "yahoo", "automation", 1): 27,
        ("provider", "yahoo", "automation", 1, "regex", 1): 28,
        ("provider", "yahoo", "automation", 1, "action"): 29,
        ("provider", "yahoo", "automation", 1, "trigger", "Threshold"): 32,
    }
    assert {path: lines.line_of(path) for path in expected} == expected


def test_text_inside_a_multiline_string_is_not_a_key():
    lines = TomlLines(TEXT)
    assert ("default", "fake") not in lines.lines
    assert ("not", "a", "header") not in lines.lines


def test_unknown_paths_fall_back_to_the_nearest_known_parent():
    lines = TomlLines(TEXT)
    assert lines.line_of(("gmail.com", "sources", "ip-1", "nope")) == 9
    assert lines.line_of(("nowhere",)) is None


def test_dotted_keys_at_the_top_of_a_table_and_inline_tables():
    text = '"a.example".connection_limit = 3\n["b.example"]\nsources = { "ip-1" = { smtp_port = 2525 } }\n'
    lines = TomlLines(text)
    assert lines.line_of(("a.example", "connection_limit")) == 1
    assert lines.line_of(("b.example", "sources", "ip-1", "smtp_port")) == 3


keys = st.text(alphabet="abcxyz.-_ ", min_size=1, max_size=8)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(keys, st.lists(st.tuples(keys, st.integers(0, 99)), min_size=1, max_size=4,
                                         unique_by=lambda kv: kv[0])),
                min_size=1, max_size=5, unique_by=lambda t: t[0]))
def test_any_quoted_tables_and_keys_are_found_on_their_lines(tables):
    out = []
    where = {}
    for name, items in tables:
        out.append(f'["{name}"]')
        where[(name,)] = len(out)
        for key, value in items:
            out.append(f'"{key}" = {value}  # c')
            where[(name, key)] = len(out)
        out.append("")
    text = "\n".join(out)
    assert tomllib.loads(text)
    lines = TomlLines(text)
    assert {path: lines.line_of(path) for path in where} == where
