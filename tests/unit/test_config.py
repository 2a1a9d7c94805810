"""Settings: file < env < overrides, validated once, loud on bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from spanfaas.config import Settings
from spanfaas.errors import InvalidRequest


def test_defaults_run_on_one_machine() -> None:
    s = Settings.load(env={})
    assert (s.host, s.port) == ("127.0.0.1", 8080)
    assert s.max_payload == 32 * 1024 * 1024
    assert s.runtime.sandbox


def test_file_then_env_then_overrides(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('port = 9000\nhost = "0.0.0.0"\n[runtime]\nsandbox = false\n')
    s = Settings.load(cfg, env={"SPANFAAS_PORT": "9100", "SPANFAAS_TOKEN": "ignored"}, host="127.0.0.2")
    assert s.port == 9100 and s.host == "127.0.0.2" and not s.runtime.sandbox


def test_bad_values_fail_loudly(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="SPANFAAS_PORT"):
        Settings.load(env={"SPANFAAS_PORT": "eighty"})
    with pytest.raises(InvalidRequest) as info:  # in range: the variable the user set is named, not `$.port`
        Settings.load(env={"SPANFAAS_PORT": "99999"})
    assert info.value.message == "environment variable SPANFAAS_PORT='99999' is not valid: it must be at most 65535"
    cfg = tmp_path / "config.toml"
    cfg.write_text("prot = 1\n")
    with pytest.raises(InvalidRequest, match="unknown setting 'prot'") as info:
        Settings.load(cfg, env={})
    assert str(cfg) in info.value.message  # it said 'invalid settings: ...', naming no file to fix
    cfg.write_text("[runtime]\nsandbox = 3\n")
    with pytest.raises(InvalidRequest) as info:
        Settings.load(cfg, env={})
    assert info.value.message == f"config file {cfg} (SPANFAAS_CONFIG): [runtime] sandbox must be true or false, got 3"
    with pytest.raises(InvalidRequest, match="does not exist"):
        Settings.load(tmp_path / "nope.toml", env={})


def test_an_unknown_key_of_the_config_file_is_named_with_what_its_table_takes(tmp_path: Path) -> None:
    # msgspec's "Object contains unknown field `sandboxx` - at `$.runtime`" named the table, not
    # the key, and said nothing of the keys it takes; a top-level one was blamed on
    # SPANFAAS_INFRASTRUCTURES when that variable was set ("environment variable ... is not valid").
    cfg = tmp_path / "config.toml"
    cases = {
        "prot = 1\n": "unknown setting 'prot'; remove it or fix its name (settings are: data_dir, host, port,",
        "[runtime]\nsandboxx = true\n": "unknown setting 'runtime.sandboxx'; remove it or fix its name ([runtime] takes: sandbox, uid_base,",
        '[[infrastructures]]\nname = "a"\nadress = "x"\n': "unknown setting 'infrastructures.adress'; remove it or fix its name ([infrastructures] takes: name, kind, address,",
    }
    for text, message in cases.items():
        cfg.write_text(text)
        # (the variable replaces the file's infrastructures: their unknown key is not read then)
        for env in ({}, *([{"SPANFAAS_INFRASTRUCTURES": '[{"name": "local"}]'}] if "infrastructures" not in text else [])):
            with pytest.raises(InvalidRequest) as info:
                Settings.load(cfg, env=env)
            assert info.value.message.startswith(f"config file {cfg} (SPANFAAS_CONFIG): {message}"), (env, info.value.message)


def test_a_config_file_that_cannot_be_read_says_why(tmp_path: Path) -> None:
    # Both were tracebacks: IsADirectoryError, UnicodeDecodeError.
    with pytest.raises(InvalidRequest) as info:
        Settings.load(tmp_path, env={})
    assert info.value.message == f"config file {tmp_path} (SPANFAAS_CONFIG) cannot be read: Is a directory; point SPANFAAS_CONFIG at a TOML file"
    cfg = tmp_path / "latin1.toml"
    cfg.write_bytes('host = "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(InvalidRequest) as info:
        Settings.load(cfg, env={})
    assert info.value.message == f"config file {cfg} (SPANFAAS_CONFIG) is not UTF-8 text (byte 11); save it as UTF-8"


def test_an_unknown_spanfaas_variable_is_refused_with_the_name_it_may_mean() -> None:
    """A mistyped variable was ignored without a word (SPANFAAS_MAX_PAYLAOD=100000000: the
    limit stayed 32 MiB), while the same mistake in the config file is refused; and a table's
    name (SPANFAAS_RUNTIME) was dropped as silently."""
    with pytest.raises(InvalidRequest) as info:
        Settings.load(env={"SPANFAAS_MAX_PAYLAOD": "100000000"})
    assert info.value.message == (
        "environment variable SPANFAAS_MAX_PAYLAOD is no setting; did you mean SPANFAAS_MAX_PAYLOAD? "
        "(remove it or fix its name; the settings are in spanfaas/config.py)"
    )
    with pytest.raises(InvalidRequest) as info:
        Settings.load(env={"SPANFAAS_RUNTIME": "sandbox=false"})
    assert info.value.message == (
        "environment variable SPANFAAS_RUNTIME names the [runtime] table, which no variable sets; "
        "set its keys in the config file (SPANFAAS_CONFIG)"
    )
    # the CLI's and the SDK's own variables, and the config file's, are no settings and fine
    env = {"SPANFAAS_URL": "http://127.0.0.1:1", "SPANFAAS_TOKEN": "sf_x", "SPANFAAS_TEST_STALL": "", "SPANFAAS_PORT": "9"}
    env["SPANFAAS_TEST_LANDLOCK_ABI"] = "5"  # (the sandbox tests' lowered Landlock ABI)
    assert Settings.load(env=env).port == 9


def test_a_variable_for_a_key_of_a_table_says_where_to_set_it() -> None:
    """SPANFAAS_EVENTS_RETRIES=5 (events.retries, as docs/events.md calls it) was answered 'did you
    mean SPANFAAS_ASYNC_RETRIES?', another setting; SPANFAAS_RUNTIME_PREWARM_HOLD 'did you mean
    SPANFAAS_FUNCTIONS_POLL?'.  A table's key is named, with the config file line that sets it (not its value: it may
    be a secret, as a URL with a password)."""
    cases = {
        "SPANFAAS_EVENTS_RETRIES": ("5", "events.retries", "[events] retries = ..."),
        "SPANFAAS_RUNTIME_PREWARM_HOLD": ("2.5", "runtime.prewarm_hold", "[runtime] prewarm_hold = ..."),
        "SPANFAAS_DNS_ADDRESS": ("10.0.0.1", "dns.address", "[dns] address = ..."),
        "SPANFAAS_DNS_ADRESS": ("10.0.0.1", "dns.address", "[dns] address = ..."),  # a typo of the key: the key it may mean
    }
    for var, (value, key, line) in cases.items():
        with pytest.raises(InvalidRequest) as info:
            Settings.load(env={var: value})
        assert info.value.message == (
            f"environment variable {var} is no setting; {key} is a key of the [{key.split('.')[0]}] table, "
            f"which no variable sets: set it in the config file (SPANFAAS_CONFIG): {line}"
        ), info.value.message
    with pytest.raises(InvalidRequest) as info:  # nothing like a key of the table: the table is named
        Settings.load(env={"SPANFAAS_IMAGES_ZZZ": "1"})
    assert "SPANFAAS_IMAGES_ZZZ is no setting; the [images] table" in info.value.message
    assert "SPANFAAS_CONFIG" in info.value.message and "did you mean" not in info.value.message



def test_a_webhook_secret_is_at_least_8_characters(tmp_path: Path) -> None:
    """docs/events.md: a shorter secret is refused at start, naming the setting."""
    cfg = tmp_path / "hooks.toml"
    cfg.write_text('[[events.webhooks]]\nname = "github"\nsecret = "1234567"\n')
    with pytest.raises(InvalidRequest) as info:
        Settings.load(cfg, env={})
    assert info.value.message.endswith(': [[events.webhooks]] secret (the one with name = "github") must be at least 8 characters')
    assert "1234567" not in info.value.message  # a secret is not written back (error messages end up in logs)
    cfg.write_text('[[events.webhooks]]\nname = "github"\nsecret = "12345678"\n')
    assert Settings.load(cfg, env={}).events.webhooks[0].secret == "12345678"


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379", "127.0.0.1:6379", "localhost"])
def test_a_redis_source_url_that_is_no_redis_url_is_refused_at_start(tmp_path: Path, url: str) -> None:
    """`url = "http://…"` started the gateway, and its Redis source then logged 'could not queue
    events (ValueError: Redis URL must specify one of the following schemes …)' every 5 s for
    ever: a setting that can never work, reported as the store's trouble.  It is refused at
    start, naming the source and the schemes."""
    cfg = tmp_path / "redis.toml"
    cfg.write_text(f'[[events.redis]]\nname = "orders"\nstream = "orders"\nurl = "{url}"\n')
    with pytest.raises(InvalidRequest) as info:
        Settings.load(cfg, env={})
    message = info.value.message
    assert f"events.redis 'orders': url {url!r} is no Redis URL" in message, message
    assert "redis://host:6379/0" in message and "rediss://" in message and "unix://" in message, message
    for good in ("redis://127.0.0.1:6379/0", "rediss://cache.internal:6380", "unix:///run/redis.sock", "REDIS://h"):
        cfg.write_text(f'[[events.redis]]\nname = "orders"\nstream = "orders"\nurl = "{good}"\n')
        assert Settings.load(cfg, env={}).events.redis[0].url == good


def test_a_bad_value_is_said_in_the_platforms_words_with_the_key_as_written(tmp_path: Path) -> None:
    """'Expected `str` of length >= 8 - at `$.events.webhooks[0].secret`': msgspec's words and
    path, not the config file's table and key, nor what to write."""
    cfg = tmp_path / "config.toml"
    where = f"config file {cfg} (SPANFAAS_CONFIG): "
    cases = {
        '[[events.webhooks]]\nname = "gh"\nsecret = "short"\n':
            '[[events.webhooks]] secret (the one with name = "gh") must be at least 8 characters',
        '[[events.webhooks]]\nname = "gh"\nsecret = "long enough"\n[[events.webhooks]]\nname = "x"\nsecret = 12345678\n':
            '[[events.webhooks]] secret (the one with name = "x") must be a string in quotes, got a whole number',
        "[runtime]\nspares = 9\n": "[runtime] spares must be at most 8, got 9",
        "[runtime]\nmax_payload = 10\n": "[runtime] max_payload must be at least 1024, got 10",
        "[runtime]\nprewarm_hold = 0\n": "[runtime] prewarm_hold must be more than 0, got 0",
        "port = 99999\n": "port must be at most 65535, got 99999",
        '[scheduler]\newma_alpha = "x"\n': '[scheduler] ewma_alpha must be a number, got "x"',
        '[[events.redis]]\nname = "r"\nstream = "s"\nstart = "old"\n':
            '[[events.redis]] start (the one with name = "r") must be one of "all", "new", got "old"',
        '[[events.webhooks]]\nname = "Bad Name"\nsecret = "long enough"\n':
            '[[events.webhooks]] name (entry 1) is not allowed: "Bad Name"',
    }
    for text, message in cases.items():
        cfg.write_text(text)
        with pytest.raises(InvalidRequest) as info:
            Settings.load(cfg, env={})
        assert info.value.message.startswith(where + message), (text, info.value.message)
        assert "Expected" not in info.value.message and "$." not in info.value.message, info.value.message
    with pytest.raises(InvalidRequest) as info:  # the variable's, in the same words
        Settings.load(env={"SPANFAAS_PORT": "99999"})
    assert info.value.message == "environment variable SPANFAAS_PORT='99999' is not valid: it must be at most 65535"
