"""`trimta check-config`: what an operator sees for a good and a bad configuration."""

from trimta.cli import main


def test_good_file_exits_0_and_lists_what_it_found(tmp_path, capsys):
    config = tmp_path / "trimta.toml"
    config.write_text('hostname = "mx.example"\n[[listener]]\nlisten = "127.0.0.1:2626"\n')
    assert main(["check-config", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"{config}: OK" in out
    assert "listener 127.0.0.1:2626" in out
    assert "shaping_data/default.toml" in out  # the shipped rules come first


def test_bad_key_exits_non_zero_naming_file_key_and_suggestion(tmp_path, capsys):
    config = tmp_path / "trimta.toml"
    config.write_text('[[listener]]\nclient_timout = "1s"\n')
    assert main(["check-config", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err == f"trimta check-config: {config}:2: listener[0].client_timout: unknown key; did you mean 'client_timeout'?\n"


def test_shaping_mistake_is_reported_with_file_and_line(tmp_path, capsys):
    shaping = tmp_path / "mine.toml"
    shaping.write_text('# ours\n["gmail.com"]\nconection_limit = 3\n')
    config = tmp_path / "trimta.toml"
    config.write_text(f'[shaping]\nfiles = ["{shaping}"]\n')
    assert main(["check-config", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert f"{shaping}:3:" in err
    assert "did you mean 'connection_limit'" in err
    assert "Traceback" not in err


def test_missing_file(tmp_path, capsys):
    assert main(["check-config", "--config", str(tmp_path / "nope.toml")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_tls_reports_are_listed_when_enabled(tmp_path, capsys):
    config = tmp_path / "trimta.toml"
    config.write_text('hostname = "mx.example"\n[tls_reporting]\nenabled = true\norganization_name = "Ex"\n'
                      'from = "tlsrpt@example.com"\nsend_hour = 22\nsend_window = "3h30m"\n')
    assert main(["check-config", "--config", str(config)]) == 0
    assert "  TLS reports from tlsrpt@example.com as mx.example, daily between 22:00 and 01:30 UTC\n" in (
        capsys.readouterr().out)
