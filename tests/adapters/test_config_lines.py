"""Mistakes in trimta.toml name file, line, key and what is accepted, as shaping files do."""

from __future__ import annotations

import pytest

from trimta.adapters.config import ConfigError, load_config
from trimta.adapters.config_base import toml_key_path as key_path


def error_of(tmp_path, text: str) -> str:
    path = tmp_path / "trimta.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value).removeprefix(f"{path}")


@pytest.mark.parametrize("text, expected", [
    ('# a comment\nhostname = "mx.example.com"\n\n[[listener]]\nlisten = "127.0.0.1:2525"\nclient_timout = "1s"\n',
     ":6: listener[0].client_timout: unknown key; did you mean 'client_timeout'?"),
    ('[[listener]]\nlisten = "127.0.0.1:1"\n\n[[listener]]\nmax_errors = -1\n',
     ":5: listener[1].max_errors: expected a positive integer, got -1"),
    ('[spool]\npath = "s"\nmax_size = "lots"\n',
     ":3: spool.max_size: "),
    ('\n[egress.domains."gmail.com"]\nconnection_limit = "x"\n',
     ':3: egress.domains."gmail.com".connection_limit: expected a positive integer, got \'x\''),
    ('[http]\n\nlisten = "nowhere:port"\n',
     ":3: http.listen: "),
    ('[[logs.webhook]]\nurl = "http://127.0.0.1:9/h"\nbatch = "many"\n',
     ":3: logs.webhook[0]."),
])
def test_error_names_the_line_of_the_key(tmp_path, text, expected):
    assert error_of(tmp_path, text).startswith(expected)


def test_key_paths_follow_the_toml_spelling():
    assert key_path('egress.domains."gmail.com".connection_limit') == ("egress", "domains", "gmail.com",
                                                                        "connection_limit")
    assert key_path("listener[2].auth[0].username") == ("listener", 2, "auth", 0, "username")
