"""services.frontend.main: the config from YAML, environment, flags and overrides; validation; auth."""
from __future__ import annotations

import pytest

from services.frontend.frontend_config import KEY_ENV, PASSWORD_ENV, USER_ENV, FrontendConfig
from services.frontend.main import parse_args
from shared.config import ConfigError, from_dict


@pytest.fixture(autouse=True)
def no_login_env(monkeypatch):
    monkeypatch.delenv(USER_ENV, raising=False)
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    monkeypatch.delenv(KEY_ENV, raising=False)


def test_defaults_are_a_local_open_page():
    cfg = parse_args([])
    assert (cfg.host, cfg.port, cfg.auth, cfg.redis_url) == ("127.0.0.1", 7860, None, None)


def test_yaml_then_flags_then_overrides(tmp_path):
    yaml_path = tmp_path / "frontend.yaml"
    yaml_path.write_text("port: 9000\nhost: 0.0.0.0\ntimeout_s: 5\n")
    cfg = parse_args(["--config", str(yaml_path), "--port", "8000", "timeout_s=2.5", "redis_url=redis://r:6379/1"])
    assert (cfg.host, cfg.port, cfg.timeout_s, cfg.redis_url) == ("0.0.0.0", 8000, 2.5, "redis://r:6379/1")
    assert parse_args(["--port", "8000", "port=8001"]).port == 8001


def test_login_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(USER_ENV, "ada")
    monkeypatch.setenv(PASSWORD_ENV, "s3cret")
    assert parse_args([]).auth == ("ada", "s3cret")


@pytest.mark.parametrize("argv, message", [
    (["port=70000"], "port must be 1..65535"),
    (["--port", "0"], "port must be >= 1"),
    (["timeout_s=0"], "timeout_s must be > 0"),
    (["auth_user=ada"], PASSWORD_ENV),
    (["prot=1"], "did you mean port"),
])
def test_bad_settings_exit_2_naming_the_fix(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_a_password_without_a_user_is_rejected_too():
    with pytest.raises(ConfigError, match=USER_ENV):
        from_dict(FrontendConfig, {"auth_password": "x"})
