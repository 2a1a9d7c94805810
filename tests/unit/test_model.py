"""Manifests are validated once into typed records; errors name the key."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from spanfaas.errors import FunctionError, FunctionOutOfMemory, FunctionTimeout, InvalidManifest
from spanfaas.model import ErrorInfo, FunctionSpec, Result, Trigger, load_manifest, parse_manifest


def test_minimal_manifest_gets_defaults() -> None:
    spec = parse_manifest('name = "hello"')
    assert spec.handler == "handler:handler"
    assert (spec.module, spec.function) == ("handler", "handler")
    assert spec.isolation == "strict" and spec.network == "none" and not spec.allow_subprocess
    assert spec.resources.memory == 256 and spec.resources.timeout == 30.0


def test_full_manifest() -> None:
    spec = parse_manifest(
        """
        name = "resize"
        handler = "pkg.main:run"
        isolation = "reuse"
        network = "host"
        allow_subprocess = true
        [resources]
        memory = 512
        cpu = 0.5
        timeout = 10
        concurrency = 8
        [scaling]
        min = 1
        max = 4
        idle_ttl = 60
        [env]
        MODE = "fast"
        """.replace("        ", "")
    )
    assert spec.module == "pkg.main" and spec.function == "run"
    assert spec.resources.concurrency == 8 and spec.scaling.max == 4
    assert spec.env == {"MODE": "fast"}


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('name = "x"\nmemroy = 5', "memroy"),
        ('name = "x"\n[resources]\nmemroy = 5', "memroy"),
        ('name = "x"\n[scaling]\nmaximum = 5', "maximum"),
    ],
)
def test_unknown_keys_are_named(text: str, key: str) -> None:
    with pytest.raises(InvalidManifest, match=f"unknown field `{key}`"):
        parse_manifest(text)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('name = "Bad Name"', "name"),
        ('name = "x"\nisolation = "sometimes"', "isolation"),
        ('name = "x"\nhandler = "no-colon"', "handler"),
        ('name = "x"\n[resources]\nmemory = 1', "resources.memory"),
        ('name = "x"\n[resources]\ntimeout = -1', "resources.timeout"),
        ('name = "x"\n[scaling]\nmin = 5\nmax = 1', "scaling.min = 5 is more than scaling.max = 1"),
        ("name = ", "not valid TOML"),
        ("", "name"),
    ],
)
def test_invalid_values_say_where(text: str, fragment: str) -> None:
    with pytest.raises(InvalidManifest, match=fragment.replace(".", r"\.")):
        parse_manifest(text)


def test_a_misspelled_value_is_named_with_the_one_it_may_mean_and_without_msgspecs_words() -> None:
    """``isolation = "reused"`` was answered "Invalid enum value 'reused' - at `$.isolation`; use
    one of: ...": msgspec's words and path, with the value meant left to find."""
    for text, said in [
        ('name = "x"\nisolation = "reused"', "isolation \"reused\" is not a value it takes; use one of: 'reuse', 'strict' (did you mean 'reuse'?)"),
        ('name = "x"\nnetwork = "Host"', "network \"Host\" is not a value it takes; use one of: 'host', 'none' (did you mean 'host'?)"),
        ('name = "x"\n[policy]\nprefer = ["costs"]', "policy.prefer[0] \"costs\" is not a value it takes; use one of: 'cost', "),
        ('name = "x"\nisolation = "sometimes"', "isolation \"sometimes\" is not a value it takes; use one of: 'reuse', 'strict'"),
    ]:
        with pytest.raises(InvalidManifest) as info:
            parse_manifest(text)
        message = info.value.message
        assert said in message and "Invalid enum" not in message and "$." not in message, message
    assert "did you mean" not in message  # (nothing like "sometimes")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('name = "x"\nmemroy = 5', "(key 'memroy')"),
        ('name = "x"\nmemroy = 5', "the top level takes: name, handler, isolation, network"),
        ('name = "x"\n[resources]\nmemroy = 5', "(key 'resources.memroy')"),
        ('name = "x"\n[resources]\nmemroy = 5', "[resources] takes: memory, cpu, timeout, concurrency, pids"),
        ('name = "x"\n[image]\npkgs = []', "[image] takes: python, packages, lists, preload"),
        ('name = "x"\n[[triggers]]\ntyp = "a"', "(key 'triggers[0].typ')"),
        ('name = "x"\n[[triggers]]\ntyp = "a"', "[[triggers]] takes: name, source, type"),
        ('name = "x"\nisolation = "sometimes"', "use one of: 'reuse', 'strict'"),
        ('name = "x"\nnetwork = "wan"', "use one of: 'host', 'none'"),
        ('name = "x"\n[policy]\nprefer = ["fast"]', "(key 'policy.prefer[0]')"),
        ('name = "x"\n[policy]\nprefer = ["fast"]', "use one of: 'cost', 'latency', 'load', 'locality', 'spread'"),
    ],
)
def test_unknown_keys_and_enum_values_say_what_would_do(text: str, message: str) -> None:
    # msgspec alone says "Object contains unknown field `memroy` - at `$.resources`" (naming the
    # table, not the key) and "Invalid enum value 'sometimes'", with nothing to pick instead.
    with pytest.raises(InvalidManifest) as info:
        parse_manifest(text)
    assert message in info.value.message


def test_a_manifest_not_in_utf8_says_so_and_a_bom_is_taken(tmp_path: Path) -> None:
    # `spanfaas deploy` of a latin-1 manifest was a traceback (UnicodeDecodeError, exit 1); one with a
    # byte-order mark "not valid TOML: Invalid statement (at line 1, column 1)".
    manifest = tmp_path / "spanfaas.toml"
    manifest.write_bytes('name = "f"\n\ndescription = "caf\u00e9"\n'.encode("latin-1"))
    with pytest.raises(InvalidManifest) as info:
        load_manifest(tmp_path)
    assert info.value.message == f"{manifest}: not UTF-8 text (byte 0xe9 on line 3); TOML files are UTF-8: save it as UTF-8"
    manifest.write_bytes(b"\xef\xbb\xbf" + 'name = "f"\ndescription = "caf\u00e9"\n'.encode())
    assert load_manifest(tmp_path).description == "caf\u00e9"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # tomllib says "Invalid value (at line 2, column 11)": neither the line nor what is wrong in it.
        ('name = "f"\nhandler = handler:handler\n', 'not valid TOML: Invalid value (at line 2, column 11): '
         'handler = handler:handler; a string is written in quotes: handler = "handler:handler"'),
        ('name = "f"\nisolation = reuse  # warm\n', 'isolation = reuse  # warm; a string is written in quotes: isolation = "reuse"'),
        ('name = "f\nhandler = "h:h"\n', "(at line 1, column 10): name = \"f; a string's closing quote is missing"),
        # a number with a unit is no string to quote
        ('name = "f"\n[resources]\ntimeout = 30s\n', "(at line 3, column 13): timeout = 30s"),
    ],
)
def test_a_toml_syntax_error_shows_its_line_and_the_fix(text: str, message: str) -> None:
    with pytest.raises(InvalidManifest) as info:
        parse_manifest(text)
    assert message in info.value.message, info.value.message
    if "30s" in text:
        assert "quotes" not in info.value.message, info.value.message


def test_a_directory_without_a_manifest_is_told_the_one_to_write(tmp_path: Path) -> None:
    """It said: create one with at least name = "my-function", for any directory; the name
    the directory has, and the handler its one module would be, are the ones to write."""
    d = tmp_path / "Image_Resize"
    d.mkdir()
    (d / "main.py").write_text("def handler(event, context):\n    return 1\n")
    with pytest.raises(InvalidManifest) as info:
        load_manifest(d)
    assert info.value.message == f'no spanfaas.toml in {d}; create one with at least: name = "image-resize" and handler = "main:handler"'
    (d / "handler.py").write_text("def handler(event, context):\n    return 1\n")  # the default handler's module
    with pytest.raises(InvalidManifest) as info:
        load_manifest(d)
    assert info.value.message == f'no spanfaas.toml in {d}; create one with at least: name = "image-resize"'
    odd = tmp_path / "42"
    odd.mkdir()
    with pytest.raises(InvalidManifest) as info:
        load_manifest(odd)
    assert info.value.message == f'no spanfaas.toml in {odd}; create one with at least: name = "my-function"'


def test_load_manifest_from_directory(tmp_path: Path) -> None:
    (tmp_path / "spanfaas.toml").write_text('name = "dir-fn"')
    assert load_manifest(tmp_path).name == "dir-fn"
    with pytest.raises(InvalidManifest, match="no spanfaas.toml"):
        load_manifest(tmp_path / "missing")


@pytest.mark.parametrize(
    ("kind", "exc"), [("error", FunctionError), ("timeout", FunctionTimeout), ("oom", FunctionOutOfMemory)]
)
def test_result_raises_the_typed_error(kind: str, exc: type[Exception]) -> None:
    r = Result(invocation_id="i", function="f", error=ErrorInfo(kind=kind, type="ValueError", message="m"))  # type: ignore[arg-type]
    assert not r.ok
    with pytest.raises(exc, match="ValueError: m"):
        r.raise_for_error()
    Result(invocation_id="i", function="f").raise_for_error()


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ('name = "x"\nhandler = "no-colon"', 'write it as module:function, e.g. handler = "handler:handler"'),
        ('name = "Bad_Name"', "lowercase letters, digits and '-', starting with a letter"),
        # a pattern inside a list or a [[table]]: msgspec's key carries the index
        ('name = "x"\n[image]\npackages = ["scikit-learn"]\nlists = ["ml"]\npreload = ["scikit-learn"]',
         "image.preload[0] 'scikit-learn' is not a module name; preload names modules to import, e.g. preload = [\"sklearn\"]"),
        ('name = "x"\n[image]\npackages = ["numpy"]\nlists = ["Science"]',
         "image.lists[0] 'Science' is not a curated list name; lowercase letters, digits and '-', starting with a letter"),
        ('name = "x"\n[[triggers]]\nname = "Nightly Job"\nschedule = "0 3 * * *"',
         "triggers[0].name 'Nightly Job' is not a trigger name; lowercase letters, digits, '.', '_' or '-'"),
        # it said "Expected `str` matching regex '^(3\\.\\d{1,2})?$'"
        ('name = "x"\n[image]\npython = "3"', "image.python '3' is not a Python version; write major.minor, e.g. python = \"3.11\", or leave it out"),
        ('name = "x"\n[image]\npython = "python3.11"', "image.python 'python3.11' is not a Python version"),
    ],
)
def test_a_pattern_mismatch_says_what_is_expected(text: str, hint: str) -> None:
    # msgspec alone says only "Expected `str` matching regex '^[A-Za-z_][\\w.]*:...'".
    with pytest.raises(InvalidManifest) as info:
        parse_manifest(text)
    assert hint in info.value.message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # They said "Expected `str` matching regex '^[a-z][a-z0-9-]{0,62}$' - at `$.name`" first,
        # without the value; the fix, where one follows from the value, is written out.
        ('name = "Bad_Four"', "name 'Bad_Four' is not a function name; lowercase letters, digits and '-', starting with a letter "
         '(at most 63): write name = "bad-four"'),
        ('name = "my function"', 'write name = "my-function"'),
        ('name = "2fast"', "name '2fast' is not a function name; lowercase letters, digits and '-', starting with a letter (at most 63)"),
        ('name = "x"\nhandler = "handler.handler"', "handler 'handler.handler' is not module:function: write handler = \"handler:handler\""),
        ('name = "x"\nhandler = "pkg.main.run"', 'write handler = "pkg.main:run"'),
    ],
)
def test_a_bad_name_or_handler_names_its_value_and_the_fix(text: str, message: str) -> None:
    with pytest.raises(InvalidManifest) as info:
        parse_manifest(text)
    assert message in info.value.message, info.value.message
    assert "regex" not in info.value.message and "$." not in info.value.message, info.value.message


def test_no_fix_is_offered_that_is_not_valid_itself() -> None:
    with pytest.raises(InvalidManifest) as info:
        parse_manifest('name = "2fast"')
    assert "write name" not in info.value.message, info.value.message
    with pytest.raises(InvalidManifest) as info:
        parse_manifest('name = "x"\nhandler = "no-colon"')
    assert "write handler = " not in info.value.message.partition("for def handler")[2], info.value.message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # A key of a table written at the top level (its table forgotten): "check its spelling" sent the
        # user to a key spelled right.
        ('name = "x"\ntimeout = 5', "timeout is a key of [resources]: move it under [resources]"),
        ('name = "x"\nmax = 2', "max is a key of [scaling]: move it under [scaling]"),
        ('name = "x"\npackages = ["numpy"]', "packages is a key of [image]: move it under [image]"),
        ('name = "x"\nhandelr = "h:h"', "did you mean handler?"),
        ('name = "x"\nschedule = "0 3 * * *"', "schedule is a key of [[triggers]]: move it under [[triggers]]"),
        ('name = "x"\n[resources]\ntimout = 5', "did you mean timeout?"),
    ],
)
def test_an_unknown_key_says_where_it_belongs_or_what_it_may_mean(text: str, message: str) -> None:
    with pytest.raises(InvalidManifest) as info:
        parse_manifest(text)
    assert message in info.value.message, info.value.message


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ("handler = 3", "handler", 'handler must be a string in quotes, got 3; write it as module:function, e.g. handler = "handler:handler"'),
        ('handler = "h:h"\n[env]\nOK = "1"\nLEVEL = 3', "env.LEVEL", '[env] LEVEL must be a string in quotes, got 3: write LEVEL = "3"'),
        ('handler = "h:h"\n[env]\nDEBUG = true', "env.DEBUG", '[env] DEBUG must be a string in quotes, got true: write DEBUG = "true"'),
        ('handler = "h:h"\n[resources]\nmemory = "256MB"', "resources.memory", 'resources.memory must be a whole number, got "256MB"; in MiB, e.g. memory = 512'),
        ('handler = "h:h"\nallow_subprocess = "yes"', "allow_subprocess", 'allow_subprocess must be true or false, got "yes"'),
        ('handler = "h:h"\nenv = 3', "env", "env must be a table, got 3"),
        # What to write must itself be right: the allowed values, no `key = ...` for a list's
        # item or a table, keys quoted when TOML needs it.
        ('handler = "h:h"\nisolation = 1', "isolation", "isolation must be a string in quotes, got 1; use one of: 'reuse', 'strict'"),
        ('handler = "h:h"\n[env]\nB = {a = 1}', "env.B", "[env] B must be a string in quotes, got a table"),
        ('handler = "h:h"\n[env]\n"a.b" = 1', "env.a.b", '[env] "a.b" must be a string in quotes, got 1: write "a.b" = "1"'),
    ],
)
def test_a_value_of_the_wrong_type_says_what_to_write(text: str, key: str, message: str) -> None:
    # msgspec alone says "Expected `str`, got `int` - at `$.env[...]`": neither the
    # key (env[...]) nor the words (str, int) are the user's.
    with pytest.raises(InvalidManifest) as info:
        parse_manifest(f'name = "f"\n{text}\n')
    assert info.value.extra["key"] == key, info.value.message
    assert message in info.value.message, info.value.message



@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ('"A=B" = "x"', "env.A=B", '[env] "A=B" is not an environment variable name: it has "="; rename it, e.g. A_B'),
        ('"" = "x"', "env", "[env] has an empty name; name each variable, e.g. GREETING = \"hello\""),
        ('"A\\u0000B" = "x"', "env.A\x00B", '[env] "A\\u0000B" is not an environment variable name: it has a NUL character'),
        ('A = "x\\u0000y"', "env.A", "[env] A has a NUL character in its value; an environment variable cannot hold one"),
    ],
)
def test_an_env_entry_the_process_cannot_have_is_refused_by_key(text: str, key: str, message: str) -> None:
    # "A=B" and "" were deployed, then every template failed to start: "function 'f' failed to load:
    # ValueError: illegal environment variable name" (a NUL: "embedded null byte"), naming no key.
    with pytest.raises(InvalidManifest) as info:
        parse_manifest(f'name = "f"\nhandler = "h:h"\n[env]\n{text}\n')
    assert info.value.extra["key"] == key, info.value.message
    assert message in info.value.message, info.value.message

@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ("[resources]\nmemory = 8", "resources.memory", "resources.memory must be a whole number >= 16, got 8; in MiB, e.g. memory = 512"),
        ("[resources]\ntimeout = -1", "resources.timeout", "resources.timeout must be a number > 0, got -1; in seconds, e.g. timeout = 30"),
        ("[resources]\ntimeout = 7200", "resources.timeout", "resources.timeout must be a number <= 3600, got 7200; in seconds"),
        ("[scaling]\nmax = 0", "scaling.max", "scaling.max must be a whole number >= 1, got 0"),
    ],
)
def test_a_value_out_of_range_says_the_range(text: str, key: str, message: str) -> None:
    # msgspec alone says "Expected `int` >= 16 - at `$.resources.memory`", without the value or the unit.
    with pytest.raises(InvalidManifest) as info:
        parse_manifest(f'name = "f"\nhandler = "h:h"\n{text}\n')
    assert info.value.extra["key"] == key, info.value.message
    assert message in info.value.message, info.value.message
    assert "Expected" not in info.value.message


@pytest.mark.parametrize(
    ("schedule", "fragment"),
    [
        ("0 3 31 2 *", "never fires"),  # 31 February
        ("0 0 1 1 * 0 2020", "never fires"),  # a year gone by
        ("61 * * * *", "out of range"),  # croniter's own reason is kept
        ("*/0 * * * *", "step '0'"),
    ],
)
def test_a_schedule_that_cannot_fire_is_refused_with_its_reason(schedule: str, fragment: str) -> None:
    """'0 3 31 2 *' was accepted; its trigger then stopped every schedule of the gateway."""
    with pytest.raises(ValueError, match=re.escape(fragment)):
        Trigger(schedule=schedule)


@pytest.mark.parametrize(
    ("triggers", "message"),
    [
        ('[[triggers]]\nname = "a"\ntype = "x"\n[[triggers]]\nname = "a"\ntype = "y"',
         "triggers[1] has the id 'f:a' of triggers[0]; give each trigger its own name"),
        # a name that is another trigger's index: triggers[1] without a name is 'f:1' too
        ('[[triggers]]\nname = "1"\ntype = "x"\n[[triggers]]\ntype = "y"',
         "triggers[1] has the id 'f:1' of triggers[0]; give each trigger its own name"),
    ],
)
def test_two_manifest_triggers_with_one_id_are_refused(triggers: str, message: str) -> None:
    """Both were deployed as 'f:a': `triggers ls` showed the id twice, and a dead letter or a
    log line naming it could not say which trigger matched."""
    with pytest.raises(InvalidManifest) as info:
        parse_manifest(f'name = "f"\n{triggers}\n')
    assert message in info.value.message and info.value.extra["key"] == "triggers[1].name"


def test_a_manifest_trigger_pattern_with_a_control_character_is_refused() -> None:
    """A pattern holding a control character never matches (no event's attribute holds one), yet it deployed."""
    with pytest.raises(InvalidManifest) as info:
        parse_manifest('name = "f"\n[[triggers]]\ntype = "x"\n[[triggers]]\nfilters = { shop = "a\\u0001" }\n')
    assert "triggers[1].filters.shop 'a\\x01' contains the control character U+0001" in info.value.message
    assert info.value.extra["key"] == "triggers[1].filters.shop"


@pytest.mark.parametrize(
    ("schedule", "instead"),
    [
        ("*/2 * * * * *", "* * * * * */2"),  # meant: every 2 seconds (seconds first, as Quartz and Spring write it)
        ("0 */5 * * * *", "*/5 * * * * 0"),  # meant: at second 0 of every 5th minute
    ],
)
def test_a_schedule_written_seconds_first_is_refused_with_the_expression_meant(schedule: str, instead: str) -> None:
    """'*/2 * * * * *' deployed and fired every second of every even minute (the 6th field
    counts seconds, so '*' there is each of them): 60 invocations a minute, where the user
    meant every 2 seconds.  A 6-field schedule whose seconds are '*' and whose minute is not
    is refused, naming the expression that fires as meant; '* * * * * *' (every second) stays."""
    with pytest.raises(InvalidManifest) as info:
        parse_manifest(f'name = "f"\n[[triggers]]\nschedule = "{schedule}"\n')
    assert info.value.extra["key"] == "triggers[0].schedule"
    message = info.value.message
    assert "the 6th field counts seconds" in message and f"'{instead}'" in message, message
    parse_manifest('name = "f"\n[[triggers]]\nschedule = "* * * * * *"\n')
    parse_manifest('name = "f"\n[[triggers]]\nschedule = "*/2 * * * * 0"\n')
    assert msgspec.json.decode(f'{{"schedule": "{schedule}"}}'.encode(), type=Trigger).schedule == schedule  # stored ones decode


def test_a_stored_trigger_with_a_control_character_still_decodes() -> None:
    """Triggers stored before control characters were refused load (the check is where they come in)."""
    trigger = msgspec.json.decode(b'{"source": "a\\nb"}', type=Trigger)
    assert trigger.source == "a\nb"


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ('locality = "eu"', 'policy.locality = "eu" does nothing unless policy.prefer has "locality"; '
                            'add it, e.g. prefer = ["locality"], or remove locality'),
        ('prefer = ["cost"]\nlocality = "census"', 'add it, e.g. prefer = ["locality", "cost"], or remove locality'),
        ('prefer = ["locality"]', 'policy.prefer has "locality" but policy.locality is empty; name a site, a region or a data set'),
    ],
    ids=["locality-alone", "locality-not-preferred", "preferred-without-locality"],
)
def test_a_locality_that_would_weigh_nothing_is_refused(policy: str, message: str) -> None:
    # `locality = "eu"` without "locality" in prefer was accepted and weighed nothing:
    # the user who wrote it saw the function run anywhere, with no word why.
    with pytest.raises(InvalidManifest) as info:
        parse_manifest(f'name = "x"\n[policy]\n{policy}\n')
    assert info.value.extra["key"] == "policy.locality"
    assert message in info.value.message, info.value.message
    assert parse_manifest('name = "x"\n[policy]\nprefer = ["latency", "locality"]\nlocality = "eu"\n').policy.locality == "eu"


@pytest.mark.parametrize(
    ("manifest", "key", "message"),
    [
        ('[resources]\nconcurrency = 4', "resources.concurrency",
         'resources.concurrency = 4 has no effect with isolation = "strict" (each instance serves one call): '
         'remove it, or set isolation = "reuse"'),
        ('isolation = "strict"\n[resources]\nconcurrency = 2', "resources.concurrency",
         'resources.concurrency = 2 has no effect with isolation = "strict"'),
        ('isolation = "reuse"\n[scaling]\nprefork = 3', "scaling.prefork",
         'scaling.prefork = 3 does no more than prefork = 1 with isolation = "reuse" (one instance is kept ready '
         'ahead of demand): set prefork = 1, raise scaling.min to keep more instances ready, or set isolation = "strict"'),
    ],
    ids=["concurrency-default-strict", "concurrency-strict", "prefork-reuse"],
)
def test_a_setting_the_isolation_ignores_is_refused(manifest: str, key: str, message: str) -> None:
    # `concurrency = 4` in strict isolation (the default) was accepted and ignored: each strict
    # instance serves one call, so the user who asked for 4 at once got 1, with no word why.
    with pytest.raises(InvalidManifest) as info:
        parse_manifest(f'name = "x"\n{manifest}\n')
    assert info.value.extra["key"] == key
    assert f"spanfaas.toml (key '{key}'): {message}" in info.value.message, info.value.message


@pytest.mark.parametrize(
    "manifest",
    [
        'isolation = "reuse"\n[resources]\nconcurrency = 8\n[scaling]\nprefork = 0',
        'isolation = "reuse"\n[scaling]\nprefork = 1',
        '[resources]\nconcurrency = 1\n[scaling]\nprefork = 4',
    ],
    ids=["reuse-concurrent-no-prefork", "reuse-prefork-1", "strict-prefork"],
)
def test_settings_the_isolation_uses_are_taken(manifest: str) -> None:
    parse_manifest(f'name = "x"\n{manifest}\n')


def test_a_stored_spec_with_a_setting_its_isolation_ignores_still_decodes() -> None:
    """Specs stored before such settings were refused load (the check is where manifests come in)."""
    spec = msgspec.json.decode(b'{"name": "x", "resources": {"concurrency": 4}}', type=FunctionSpec)
    assert spec.isolation == "strict" and spec.resources.concurrency == 4


@pytest.mark.parametrize("var", ["HOME", "TMPDIR"])
def test_an_env_entry_the_runtime_sets_per_instance_is_refused_not_silently_replaced(var: str) -> None:
    # HOME = "/custom" was deployed; the module saw it at import, then every call saw the
    # instance's scratch dir instead (each instance sets both to it), without a word.
    with pytest.raises(InvalidManifest) as info:
        parse_manifest(f'name = "f"\nhandler = "h:h"\n[env]\n{var} = "/custom"\n')
    assert info.value.extra["key"] == f"env.{var}", info.value.message
    assert f"[env] {var} is set by the runtime: each instance's own scratch dir" in info.value.message, info.value.message
    assert "name your variable otherwise" in info.value.message
