"""``[[logs.webhook]]`` tables: values with units, defaults, and mistakes said clearly."""

from __future__ import annotations

import tomllib

import pytest

from trimta.adapters.config import ConfigError, load_config
from trimta.adapters.webhook_config import WebhookConfig, parse_webhooks


def parse(text: str) -> tuple[WebhookConfig, ...]:
    return parse_webhooks(tomllib.loads(text), "trimta.toml")


def error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return info.value


def test_every_key_is_parsed_with_its_unit():
    [hook] = parse(
        """
        [[logs.webhook]]
        url = "https://hooks.example.com/trimta?x=1"
        name = "crm"
        record_types = ["Delivery", "Bounce"]
        batch_size = 50
        max_batch_latency = "250ms"
        headers = { Authorization = "Bearer s3cret", X-Env = "prod" }
        timeout = "10s"
        min_retry_interval = "2s"
        max_retry_interval = "10m"
        """
    )
    assert hook.name == "crm"
    assert hook.record_types == frozenset({"Delivery", "Bounce"})
    assert (hook.batch_size, hook.max_batch_latency_s, hook.timeout_s) == (50, 0.25, 10.0)
    assert (hook.min_retry_interval_s, hook.max_retry_interval_s) == (2.0, 600.0)
    assert hook.headers == (("Authorization", "Bearer s3cret"), ("X-Env", "prod"))
    assert (hook.origin.scheme, hook.origin.host, hook.origin.port) == ("https", "hooks.example.com", 443)
    assert hook.target == "/trimta?x=1"
    assert hook.wants({"type": "Bounce"}) and not hook.wants({"type": "Reception"})


def test_defaults_send_every_type_and_name_the_journal_after_the_url():
    a, b = parse('[[logs.webhook]]\nurl = "http://127.0.0.1:9000/a"\n[[logs.webhook]]\nurl = "http://127.0.0.1:9000/b"\n')
    assert a.record_types is None and a.wants({"type": "AdminBounce"}) and a.wants({"type": "Reception"})
    assert (a.batch_size, a.max_batch_latency_s, a.timeout_s) == (100, 1.0, 30.0)
    assert a.name.startswith("127.0.0.1-") and a.name != b.name
    assert a.name == parse('[[logs.webhook]]\nurl = "http://127.0.0.1:9000/a"\n')[0].name


def test_any_means_every_type():
    [hook] = parse('[[logs.webhook]]\nurl = "http://h/"\nrecord_types = ["Any"]\n')
    assert hook.record_types is None


def test_automation_records_can_be_chosen():
    [hook] = parse('[[logs.webhook]]\nurl = "http://h/"\nrecord_types = ["Automation"]\n')
    assert hook.wants({"type": "Automation", "event": "Fired"}) and not hook.wants({"type": "Delivery"})


def test_no_webhooks_is_fine():
    assert parse("[logs]\npath = 'logs'\n") == ()
    assert parse("") == ()


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ("[[logs.webhook]]\nbatch_size = 5\n", "logs.webhook[0]", "needs a url"),
        ('[[logs.webhook]]\nurl = "ftp://h/"\n', "logs.webhook[0].url", "http:// or https://"),
        ('[[logs.webhook]]\nurl = "http://user:pw@h/"\n', "logs.webhook[0].url", "credentials in headers"),
        ('[[logs.webhook]]\nurl = "http://h/"\nbatch_sise = 5\n', "logs.webhook[0].batch_sise", "did you mean 'batch_size'"),
        ('[[logs.webhook]]\nurl = "http://h/"\nbatch_size = 0\n', "logs.webhook[0].batch_size", "positive integer"),
        ('[[logs.webhook]]\nurl = "http://h/"\nrecord_types = ["Delivered"]\n', "logs.webhook[0].record_types",
         "unknown record type 'Delivered'"),
        ('[[logs.webhook]]\nurl = "http://h/"\nrecord_types = "Bounce"\n', "logs.webhook[0].record_types",
         "expected a list"),
        ('[[logs.webhook]]\nurl = "http://h/"\nmax_batch_latency = "soon"\n', "logs.webhook[0].max_batch_latency",
         "expected"),
        ('[[logs.webhook]]\nurl = "http://h/"\ntimeout = 0\n', "logs.webhook[0].timeout", "longer than zero"),
        ('[[logs.webhook]]\nurl = "http://h/"\nheaders = { "Bad Name" = "x" }\n', "logs.webhook[0].headers",
         "not a valid header name"),
        ('[[logs.webhook]]\nurl = "http://h/"\nheaders = { X-A = "a\\r\\nX-B: b" }\n', "logs.webhook[0].headers",
         "one line"),
        ('[[logs.webhook]]\nurl = "http://h/"\nheaders = { Content-Length = "1" }\n', "logs.webhook[0].headers",
         "set by trimta"),
        ('[[logs.webhook]]\nurl = "http://h/"\nname = "../etc"\n', "logs.webhook[0].name", "letters, digits"),
        ('[[logs.webhook]]\nurl = "http://h/"\nmin_retry_interval = "10m"\nmax_retry_interval = "1m"\n',
         "logs.webhook[0].max_retry_interval", "not be shorter"),
        ('[[logs.webhook]]\nurl = "http://a/"\nname = "x"\n[[logs.webhook]]\nurl = "http://b/"\nname = "x"\n',
         "logs.webhook[1].name", "cannot share a journal"),
        ("[logs]\nwebhook = 3\n", "logs.webhook", "[[logs.webhook]]"),
    ],
)
def test_mistakes_name_the_key_and_what_would_be_accepted(text, key, words):
    exc = error(text)
    assert exc.file == "trimta.toml"
    assert exc.key == key
    assert words in str(exc)


def test_webhooks_load_from_the_daemon_config_file(tmp_path):
    path = tmp_path / "trimta.toml"
    path.write_text('[logs]\npath = "logs"\n[[logs.webhook]]\nurl = "http://127.0.0.1:9000/hook"\nbatch_size = 10\n')
    config = load_config(path)
    [hook] = parse_webhooks(config.raw, config.source)
    assert hook.url == "http://127.0.0.1:9000/hook" and hook.batch_size == 10
