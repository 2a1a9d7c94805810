"""The ``spanfaas`` command, driven through Typer's CliRunner against a real gateway
app (in-memory infrastructure) served by uvicorn on a loopback port.

``up`` starts the real local runtime and is covered by tests/e2e.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from click.testing import Result
from typer.testing import CliRunner

from spanfaas.cli import app
from spanfaas.config import Settings
from spanfaas.gateway import create_app
from spanfaas.gateway.auth import issue_token
from spanfaas.infra.memory import InMemoryInfrastructure
from spanfaas.model import ErrorInfo, Event
from spanfaas.store import DeadLetter, SQLiteStore

ROOT = Path(__file__).resolve().parents[2]
HELLO = str(ROOT / "examples" / "hello")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Live:
    """The gateway app on uvicorn in a thread, with an admin and an invoke-only token."""

    def __init__(self, root: Path) -> None:
        self.store = SQLiteStore(root / "spanfaas.db")
        self.app = create_app(Settings(data_dir=str(root)), self.store, InMemoryInfrastructure())
        self.admin = issue_token(self.store, "admin", ["admin"])[1]
        self.invoker = issue_token(self.store, "invoker", ["invoke"])[1]
        self.url = f"http://127.0.0.1:{free_port()}"
        port = int(self.url.rsplit(":", 1)[1])
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="warning", ws="none"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Live:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.store.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    with Live(tmp_path_factory.mktemp("cli-gateway")) as gw:
        yield gw


@pytest.fixture
def cli(live: Live, tmp_path: Path) -> Any:
    """Run ``spanfaas ARGS`` against the live gateway (url/token from the env, as a user would set them)."""
    runner = CliRunner()
    env = {"SPANFAAS_URL": live.url, "SPANFAAS_TOKEN": live.admin, "XDG_CONFIG_HOME": str(tmp_path / "config"), "COLUMNS": "200"}

    def run(*args: str, input: str | bytes | None = None, **extra_env: str) -> Result:
        return runner.invoke(app, list(args), env={**env, **extra_env}, input=input, catch_exceptions=False)

    return run


def expect_error(result: Result, code: int, *fragments: str) -> None:
    """A red one-line message on stderr and the error's exit code; no traceback of the CLI."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert result.stderr.startswith("error: "), result.stderr
    assert "spanfaas/cli" not in result.stderr and "spanfaas/client" not in result.stderr
    if code != 8:  # a failed function's own traceback is shown: it is what the user fixes
        assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)


def fn_dir(root: Path, name: str, code: str) -> str:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "spanfaas.toml").write_text(f'name = "{name}"\nhandler = "main:handler"\n')
    (d / "main.py").write_text(code)
    return str(d)


# -- the everyday path ----------------------------------------------------------------


def test_deploy_invoke_ls_logs_rm(cli: Any) -> None:
    r = cli("deploy", HELLO)
    assert r.exit_code == 0, r.stderr
    assert "deployed hello version" in r.stderr and r.stdout == "hello\n"  # what it made on stdout, the rest on stderr

    r = cli("invoke", "hello", "-d", '{"name":"x"}')
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout) == {"message": "hello, x"}
    assert "ms" in r.stderr and "memory" in r.stderr  # timing and infra on stderr, data alone on stdout

    r = cli("ls")
    assert r.exit_code == 0 and "hello" in r.stdout and "handler:handler" in r.stdout

    r = cli("logs", "hello")
    assert r.exit_code == 0 and "succeeded" in r.stdout
    assert re.search(r"── [0-9a-f]+ · succeeded · memory · ", r.stdout), r.stdout  # where it ran (spanning)

    r = cli("rm", "hello")
    assert r.exit_code == 0 and "removed hello" in r.stderr and r.stdout == ""
    expect_error(cli("invoke", "hello"), 4, "function 'hello' not found")


def test_a_command_that_makes_something_prints_what_it_made_alone_on_stdout(cli: Any, tmp_path: Path) -> None:
    """``id=$(spanfaas images build DIR)`` got nothing: the image's id was on stderr only; ``deploy``
    and ``triggers add`` put a sentence on stdout ('✓ trigger trg_… on hello: …'), no id a script
    could pass on.  Now each prints what it made alone on stdout (what the next command takes:
    ``invoke NAME``, ``triggers rm ID``), what it did on stderr; ``--json`` the record on stdout."""
    d = fn_dir(tmp_path, "made", "def handler(event, context):\n    return 1\n")
    r = cli("deploy", d)
    assert r.exit_code == 0 and r.stdout == "made\n", (r.stdout, r.stderr)
    assert "✓ deployed made version 1" in r.stderr
    try:
        r = cli("triggers", "add", "made", "--type", "com.example.made")
        assert r.exit_code == 0, r.stderr
        trigger_id = r.stdout.strip()
        assert re.fullmatch(r"trg_[0-9a-f]+", trigger_id) and r.stdout == trigger_id + "\n", r.stdout
        assert f"✓ trigger {trigger_id} on made" in r.stderr, r.stderr
        assert cli("triggers", "rm", trigger_id).exit_code == 0  # the id printed is the one rm takes
        r = cli("triggers", "add", "made", "--type", "com.example.made", "--json")
        assert r.exit_code == 0 and json.loads(r.stdout)["id"].startswith("trg_") and r.stderr == "", (r.stdout, r.stderr)
    finally:
        cli("rm", "made")  # and its triggers: other tests of the shared gateway list none


def test_a_triggers_name_shows_in_its_tables(cli: Any, tmp_path: Path) -> None:
    """``triggers add --name nightly`` and ``triggers ls`` showed the name only under --json."""
    d = fn_dir(tmp_path, "named", "def handler(event, context):\n    return 1\n")
    assert cli("deploy", d).exit_code == 0
    try:
        r = cli("triggers", "add", "named", "--schedule", "0 3 * * *", "--name", "nightly")
        assert r.exit_code == 0 and "nightly" in r.stderr, r.stderr
        trigger_id = r.stdout.strip()
        r = cli("triggers", "ls", "-f", "named")
        assert r.exit_code == 0, r.stderr
        header, row = r.stdout.splitlines()
        assert header.split() == ["ID", "NAME", "FUNCTION", "ORIGIN", "MATCHES"], header
        assert row.split()[:4] == [trigger_id, "nightly", "named", "api"], row
        assert cli("triggers", "add", "named", "--type", "com.example.unnamed").exit_code == 0
        rows = cli("triggers", "ls", "-f", "named").stdout.splitlines()[1:]
        assert sorted(row.split()[1] for row in rows) == ["-", "nightly"], rows  # no name: a dash, not a gap
    finally:
        cli("rm", "named")


def test_a_deploy_declaring_the_name_of_an_api_trigger_exits_as_a_conflict(cli: Any, tmp_path: Path) -> None:
    """A manifest could declare a trigger name an API trigger of the function had already."""
    d = fn_dir(tmp_path, "twice", "def handler(event, context):\n    return 1\n")
    assert cli("deploy", d).exit_code == 0
    try:
        trigger_id = cli("triggers", "add", "twice", "--schedule", "0 3 * * *", "--name", "nightly").stdout.strip()
        with open(Path(d) / "spanfaas.toml", "a") as f:
            f.write('[[triggers]]\nname = "nightly"\nschedule = "0 4 * * *"\n')
        r = cli("deploy", d)
        expect_error(r, 5, "'twice:nightly'", f"'{trigger_id}'", f"spanfaas triggers rm {trigger_id}")
        assert r.stdout == "", r.stdout
    finally:
        cli("rm", "twice")


def test_logs_and_result_show_the_origin_of_a_call_another_gateway_placed_here(cli: Any, live: Live, tmp_path: Path) -> None:
    """A site's record of a call another gateway placed on it keeps that gateway's id of it
    (``origin``), but ``spanfaas logs`` did not show it: the two records could not be joined by eye."""
    d = fn_dir(tmp_path, "placed", "def handler(event, context):\n    return context.invocation_id\n")
    assert cli("deploy", d).exit_code == 0
    origin = "0123456789abcdef" * 2  # the placing gateway's id of the call
    headers = {"Authorization": f"Bearer {live.admin}", "x-spanfaas-origin-id": origin}
    r = httpx.post(f"{live.url}/v1/functions/placed/invoke", json={}, headers=headers)
    assert r.status_code == 200 and r.json() == origin, r.text
    here = r.headers["x-spanfaas-invocation-id"]
    assert cli("invoke", "placed").exit_code == 0  # a call made here: no origin
    out = cli("logs", "placed").stdout
    assert re.search(rf"── {here} · succeeded · memory · .* · origin {origin}", out), out
    assert out.count("origin") == 1, out
    by_id = {rec["id"]: rec for rec in json.loads(cli("logs", "placed", "--json").stdout)["invocations"]}
    assert by_id[here]["origin"] == origin and [rec["origin"] for i, rec in by_id.items() if i != here] == [""]
    assert json.loads(cli("result", here, "--json").stdout)["origin"] == origin
    out = cli("logs", here).stdout
    assert f"origin {origin}" in out, out


def test_an_identical_redeploy_says_it_is_unchanged(cli: Any, tmp_path: Path) -> None:
    d = fn_dir(tmp_path, "same", "def handler(event, context):\n    return 1\n")
    r = cli("deploy", d)
    assert r.exit_code == 0 and "deployed same version 1" in r.stderr, r.stderr
    r = cli("deploy", d)
    assert r.exit_code == 0, r.stderr
    assert "same is unchanged: version 1 (" in r.stderr and "deployed" not in r.stderr and r.stdout == "same\n"
    doc = json.loads(cli("deploy", d, "--json").stdout)
    assert doc["version"] == 1 and doc["changed"] is False
    Path(d, "main.py").write_text("def handler(event, context):\n    return 2\n")
    r = cli("deploy", d)
    assert r.exit_code == 0 and "deployed same version 2" in r.stderr


def test_a_deploy_whose_code_fails_to_import_shows_where(cli: Any, tmp_path: Path) -> None:
    """The gateway sends the import's traceback with the 400; the CLI showed only its last line
    ('failed to load: ModuleNotFoundError: ...'), not the file and line to fix."""
    d = fn_dir(tmp_path, "broken", "import os\n\nimport no_such_module_here\n\ndef handler(event, context):\n    return 1\n")
    r = cli("deploy", d)
    assert r.exit_code == 2, (r.stdout, r.stderr)
    assert r.stderr.startswith("error: ") and "no_such_module_here" in r.stderr.splitlines()[0]
    assert 'main.py", line 3' in r.stderr and "import no_such_module_here" in r.stderr, r.stderr
    assert "spanfaas/cli" not in r.stderr and "spanfaas/client" not in r.stderr  # the function's, not ours
    r = cli("deploy", d, "--json")
    assert json.loads(r.stdout)["traceback"].count('main.py", line 3') == 1

def test_every_command_has_one_json_document(cli: Any, tmp_path: Path) -> None:
    docs: dict[str, Any] = {}
    for name, args in [
        ("deploy", ["deploy", HELLO]),
        ("invoke", ["invoke", "hello", "-d", '{"name":"j"}']),
        ("async", ["invoke", "hello", "-d", '{"name":"later"}', "--async"]),
        ("ls", ["ls"]),
        ("logs", ["logs", "hello"]),
        ("info", ["info"]),
        ("doctor", ["doctor"]),
    ]:
        r = cli(*args, "--json")
        assert r.exit_code == 0, (name, r.stderr)
        docs[name] = json.loads(r.stdout)  # exactly one document: json.loads rejects trailing data
    assert docs["deploy"]["name"] == "hello"
    assert docs["invoke"]["result"] == {"message": "hello, j"} and docs["invoke"]["status"] == "succeeded"
    assert docs["async"]["status"] == "queued"
    assert "hello" in [f["name"] for f in docs["ls"]["functions"]]
    assert docs["logs"]["invocations"]
    assert docs["info"]["version"] and docs["doctor"]["authenticated"] is True

    job = docs["async"]["id"]
    r = cli("result", job, "--wait", "--timeout", "10", "--json")
    assert r.exit_code == 0, r.stderr
    record = json.loads(r.stdout)
    assert record["id"] == job and record["result"] == {"message": "hello, later"}

    r = cli("rm", "hello", "--json")
    assert json.loads(r.stdout) == {"removed": "hello"}


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("invoke", "hello", "--bogus"), "No such option: --bogus; see `spanfaas invoke --help`"),
        (("invoke",), "Missing argument"),
        (("invoke", "hello", "--timeout", "soon"), "'--timeout'"),
        (("logs", "hello", "-n", "0"), "'--limit' / '-n'"),
        (("no-such-command",), "No such command 'no-such-command'; see `spanfaas --help`"),
        (("events", "send"), "Missing option '--type'; see `spanfaas events send --help`"),
        ((), "No such option: --json"),
    ],
)
def test_a_usage_error_under_json_is_one_json_document(cli: Any, args: tuple[str, ...], fragment: str) -> None:
    """Click's usage errors (unknown option, missing argument, bad value) printed only their
    usage text on stderr under --json: a script reading stdout got nothing to parse."""
    r = cli(*args, "--json")
    assert r.exit_code == 2, (r.stdout, r.stderr)
    problem = json.loads(r.stdout)  # exactly one document
    assert problem["type"].endswith("/invalid-request") and fragment in problem["detail"], problem
    assert "Usage: spanfaas" in r.stderr  # people still get click's usage text
    r = cli(*args)
    assert r.exit_code == 2 and r.stdout == "" and "Usage: spanfaas" in r.stderr  # without --json: as before


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("invoke", "hello", "--timeout", "5s"), "Invalid value for '--timeout': '5s' is not a number"),
        (("invoke", "hello", "--timeout=soon"), "Invalid value for '--timeout': 'soon' is not a number"),
        (("up", "--port", "http"), "Invalid value for '--port': 'http' is not a whole number"),
        (("logs", "hello", "--status", "bogus"), "Invalid value for '--status': 'bogus' is not one of 'queued', 'running'"),
    ],
)
def test_a_bad_option_value_is_said_in_the_clis_words(cli: Any, args: tuple[str, ...], said: str) -> None:
    """Typer's validator spoke for the CLI: "Input should be a valid number, unable to parse string
    as a number" (without the value), and "Value error, 'bogus' is not one of ..."."""
    for r, text in ((cli(*args), None), (cli(*args, "--json"), "detail")):
        assert r.exit_code == 2, (r.stdout, r.stderr)
        message = json.loads(r.stdout)[text] if text else r.stderr
        assert said in message, message
        assert "Input should be" not in message and "Value error" not in message, message


def test_invoke_data_sources(cli: Any, tmp_path: Path) -> None:
    cli("deploy", HELLO)
    event = tmp_path / "event.json"
    event.write_text('{"name": "file"}')
    r = cli("invoke", "hello", "-d", f"@{event}")
    assert json.loads(r.stdout) == {"message": "hello, file"}
    r = cli("invoke", "hello", "-d", "@-", input='{"name": "stdin"}')
    assert json.loads(r.stdout) == {"message": "hello, stdin"}
    r = cli("invoke", "hello", "--raw", "-d", '{"name":"raw"}')
    assert r.stdout == '{"message":"hello, raw"}'
    expect_error(cli("invoke", "hello", "-d", "{name: x}"), 2, "-d is not valid JSON", "quote it")
    expect_error(cli("invoke", "hello", "-d", f"@{tmp_path / 'missing.json'}"), 2, "cannot read -d @")


def test_an_argument_that_is_not_utf8_is_refused_by_name(cli: Any, tmp_path: Path) -> None:
    """Arguments in another encoding (a Latin-1 terminal: b'h\\xe9llo') reach Python as lone
    surrogates: `invoke`, `logs` and `triggers add` printed a UnicodeEncodeError traceback (exit 1)."""
    for args in (["invoke", "h\udce9llo"], ["logs", "\udcff"], ["triggers", "add", "hello", "--type", "a\udce9"]):
        expect_error(cli(*args), 2, "is not UTF-8 (byte 0x", "LANG=C.UTF-8")
        r = cli(*args, "--json")
        assert r.exit_code == 2 and "not UTF-8" in json.loads(r.stdout)["detail"]
    named = tmp_path / "caf\udce9.json"  # a file's name may be any bytes: it is not refused
    named.write_bytes(b'{"name": "latin"}')
    assert cli("deploy", HELLO).exit_code == 0
    r = cli("invoke", "hello", "-d", f"@{named}")
    assert r.exit_code == 0 and json.loads(r.stdout) == {"message": "hello, latin"}, r.stderr


def test_events_send_takes_data_as_invoke_does(cli: Any, tmp_path: Path) -> None:
    """``events send -d @event.json`` answered "--data is not valid JSON: Expecting value: line 1
    column 1 (char 0)": it took no file, nor stdin, and its message did not say how to send one."""
    got = "import json\ndef handler(event, context):\n    print('EVENT', json.dumps(event, sort_keys=True))\n"
    assert cli("deploy", fn_dir(tmp_path, "ev-data", got)).exit_code == 0
    try:
        _send_data_of_each_kind(cli, tmp_path)
    finally:
        cli("rm", "ev-data")  # and its trigger: other tests of the shared gateway list none


def _send_data_of_each_kind(cli: Any, tmp_path: Path) -> None:
    assert cli("triggers", "add", "ev-data", "--type", "com.example.ev-data").exit_code == 0
    event = tmp_path / "event.json"
    event.write_text('{"name": "file"}')
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"\x00\xffbin")
    for args, input in ((["-d", f"@{event}"], None), (["-d", "@-"], '{"name": "stdin"}'), (["-d", f"@{blob}"], None)):
        r = cli("events", "send", "--type", "com.example.ev-data", *args, "--json", input=input)
        assert r.exit_code == 0, r.stderr
        [job] = json.loads(r.stdout)["invocations"]
        assert cli("result", job, "--wait", "--timeout", "10").exit_code == 0
    logs = "".join(rec["logs"] for rec in json.loads(cli("logs", "ev-data", "--json").stdout)["invocations"])
    assert '"data": {"name": "file"}' in logs and '"data": {"name": "stdin"}' in logs
    assert '"data_base64": "AP9iaW4="' in logs and '"datacontenttype": "application/octet-stream"' in logs
    expect_error(cli("events", "send", "--type", "com.example.ev-data", "-d", "{name: x}"), 2, "-d is not valid JSON", "-d @FILE")


def test_events_send_says_what_the_ids_it_prints_are(cli: Any, tmp_path: Path) -> None:
    """``events send`` printed a bare hex id per invocation and nothing else: not that the event
    was queued, nor that the id is an invocation's to look up (``invoke --async`` says both)."""
    assert cli("deploy", fn_dir(tmp_path, "ev-said", "def handler(event, context):\n    return 1\n")).exit_code == 0
    try:
        assert cli("triggers", "add", "ev-said", "--type", "com.example.ev-said").exit_code == 0
        r = cli("events", "send", "--type", "com.example.ev-said", "--id", "said-1")
        assert r.exit_code == 0, r.stderr
        [job] = r.stdout.split()  # the ids alone on stdout, for scripts
        assert re.fullmatch(r"[0-9a-f]{32}", job)
        assert "event said-1 queued 1 invocation" in r.stderr, r.stderr
        assert f"spanfaas result {job} --wait" in r.stderr
    finally:
        cli("rm", "ev-said")  # and its trigger: other tests of the shared gateway list none


def test_events_send_sets_extension_attributes(cli: Any, tmp_path: Path) -> None:
    """``events send`` could set no extension attribute: a trigger filtering on one (``--filter
    shop='b*'``) could not be tried from the command line.  ``--ext NAME=VALUE`` (repeatable) sets
    them; the function sees them in ``context.event``."""
    got = "import json\ndef handler(event, context):\n    return {k: context.event.get(k) for k in ('shop', 'region', 'id')}\n"
    assert cli("deploy", fn_dir(tmp_path, "ev-ext", got)).exit_code == 0
    try:
        assert cli("triggers", "add", "ev-ext", "--type", "com.example.ev-ext", "--filter", "shop=b*").exit_code == 0
        r = cli("events", "send", "--type", "com.example.ev-ext", "--id", "x-1")
        assert r.exit_code == 0 and "matched no trigger" in r.stdout, (r.stdout, r.stderr)  # the filter needs shop
        r = cli("events", "send", "--type", "com.example.ev-ext", "--id", "x-2", "--ext", "shop=berlin", "--ext", "region=eu1")
        assert r.exit_code == 0, r.stderr
        [job] = r.stdout.split()
        r = cli("result", job, "--wait", "--timeout", "10", "--json")
        assert r.exit_code == 0, r.stderr
        assert json.loads(r.stdout)["result"] == {"shop": "berlin", "region": "eu1", "id": "x-2"}
    finally:
        cli("rm", "ev-ext")  # and its trigger: other tests of the shared gateway list none


@pytest.mark.parametrize(
    ("ext", "fragments"),
    [
        ("shop", ("--ext 'shop' must be NAME=VALUE", "--ext shop=berlin")),
        ("=berlin", ("--ext '=berlin' must be NAME=VALUE",)),
        ("Shop=berlin", ("'Shop' is not a CloudEvents attribute name", "lower-case letters a-z and digits 0-9")),
        ("shop_id=1", ("'shop_id' is not a CloudEvents attribute name",)),
        ("averyveryverylongname1=x", ("'averyveryverylongname1' is 22 characters", "at most 20")),
        ("id=x", ("'id' is a CloudEvents context attribute, not an extension", "--id")),
        ("type=x", ("'type' is a CloudEvents context attribute", "--type")),
        ("data=x", ("'data' is a CloudEvents context attribute", "-d")),
        ("specversion=0.3", ("'specversion' is a CloudEvents context attribute", "1.0")),
        ("time=now", ("'time' is a CloudEvents context attribute", "not an extension")),
    ],
)
def test_events_send_refuses_an_extension_the_spec_does_not_allow(cli: Any, ext: str, fragments: tuple[str, ...]) -> None:
    expect_error(cli("events", "send", "--type", "com.example.x", "--ext", ext), 2, *fragments)
    r = cli("events", "send", "--type", "com.example.x", "--ext", ext, "--json")
    assert r.exit_code == 2 and json.loads(r.stdout)["type"].endswith("/invalid-request"), r.stdout


def test_events_send_refuses_an_extension_given_twice(cli: Any) -> None:
    expect_error(cli("events", "send", "--type", "com.example.x", "--ext", "shop=a", "--ext", "shop=b"), 2,
                 "--ext sets shop twice ('a', 'b'); give it one value")  # fmt: skip


def test_data_nested_too_deeply_says_so(cli: Any, tmp_path: Path) -> None:
    # json.loads' RecursionError came out as a traceback (exit 1).
    deep = "[" * 5000 + "]" * 5000
    event = tmp_path / "deep.json"
    event.write_text(deep)
    for args in (["-d", deep], ["-d", f"@{event}"]):
        expect_error(cli("invoke", "hello", *args), 2, "nested too deeply", "flatten it")
    expect_error(cli("events", "send", "--type", "com.example.deep", "-d", deep), 2, "nested too deeply")


def test_data_at_with_no_file_says_so(cli: Any) -> None:
    # `-d @` read Path(""), the current directory: "cannot read -d @: Is a directory".
    for args in (["invoke", "hello", "-d", "@"], ["events", "send", "--type", "t", "-d", "@"]):
        r = cli(*args)
        expect_error(r, 2, "-d @ names no file", "-d @FILE", "-d @- for stdin")
        assert "directory" not in r.stderr

def test_bytes_round_trip(cli: Any, tmp_path: Path) -> None:
    cli("deploy", fn_dir(tmp_path, "rev", "def handler(event, context):\n    return bytes(reversed(event))\n"))
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"\x00\xffabc")
    r = cli("invoke", "rev", "-d", f"@{blob}", "--raw")
    assert r.exit_code == 0, r.stderr
    assert r.stdout_bytes == b"cba\xff\x00"
    r = cli("invoke", "rev", "-d", f"@{blob}", "--json")
    assert json.loads(r.stdout)["output_base64"] == "Y2Jh/wA="


def test_async_then_result(cli: Any, tmp_path: Path) -> None:
    cli("deploy", fn_dir(tmp_path, "nap", "import time\ndef handler(event, context):\n    time.sleep(0.5)\n    return 'rested'\n"))
    r = cli("invoke", "nap", "--async")
    assert r.exit_code == 0
    job = r.stdout.strip()
    assert job and "\n" not in job and f"spanfaas result {job} --wait" in r.stderr
    r = cli("result", job)
    assert r.exit_code == 0 and ("queued" in r.stdout or "running" in r.stdout or "rested" in r.stdout)
    r = cli("result", job, "--wait")
    assert r.exit_code == 0 and json.loads(r.stdout) == "rested"
    r = cli("logs", job)
    assert r.exit_code == 0 and job in r.stdout


def test_function_failure_shows_its_traceback_and_logs(cli: Any, tmp_path: Path) -> None:
    cli("deploy", fn_dir(tmp_path, "boom", "def handler(event, context):\n    print('working on it')\n    raise KeyError('missing-thing')\n"))
    r = cli("invoke", "boom")
    expect_error(r, 8, "KeyError", "missing-thing")
    assert 'raise KeyError' in r.stderr and "working on it" in r.stderr  # the function's traceback and logs
    assert "spanfaas/" not in r.stderr  # it starts at the function's code
    r = cli("invoke", "boom", "--json")
    assert r.exit_code == 8
    problem = json.loads(r.stdout)
    assert problem["type"].endswith("/function-error") and "KeyError" in problem["traceback"]

    job = cli("invoke", "boom", "--async").stdout.strip()
    expect_error(cli("result", job, "--wait", "--timeout", "10"), 8, "missing-thing")


def test_a_functions_control_characters_do_not_reach_the_terminal(cli: Any, tmp_path: Path) -> None:
    """What a function prints (its logs, its error's message and traceback) is shown with its
    control characters escaped: ESC [2J would clear the user's terminal, a carriage return hide
    what came before it on its line."""
    code = (
        "def handler(event, context):\n"
        "    print('\\x1b[2Jcleared\\tand\\rhidden')\n"
        "    if event:\n"
        "        raise ValueError('bad \\x1b]0;title\\x07 \\x9b31m')\n"
        "    return {}\n"
    )
    cli("deploy", fn_dir(tmp_path, "ctl", code))
    assert cli("invoke", "ctl").exit_code == 0
    r = cli("logs", "ctl")
    assert r.exit_code == 0, r.stderr
    assert "\x1b" not in r.stdout and "\r" not in r.stdout, repr(r.stdout)
    assert "\\x1b[2Jcleared" in r.stdout and "and\\x0dhidden" in r.stdout, repr(r.stdout)

    r = cli("invoke", "ctl", "-d", "1")
    assert r.exit_code == 8
    shown = r.stderr
    assert not any(c in shown for c in "\x1b\x07\x9b\r"), repr(shown)
    assert "bad \\x1b]0;title\\x07 \\x9b31m" in shown and "\\x1b[2Jcleared" in shown, repr(shown)
    r = cli("logs", "ctl")
    assert not any(c in r.stdout for c in "\x1b\x07\x9b\r"), repr(r.stdout)
    assert "ValueError: bad \\x1b]0;title" in r.stdout
    r = cli("logs", "ctl", "--json")  # for scripts: the logs as they are
    assert "\x1b[2Jcleared" in json.loads(r.stdout)["invocations"][0]["logs"]


def test_logs_of_a_function_do_not_fetch_its_outputs(cli: Any, tmp_path: Path) -> None:
    """``spanfaas logs NAME`` fetched every listed invocation's output to show none of them:
    ten 15 MiB results took 8 s, 0.85 GB in the CLI and 3.4 GB more in the gateway."""
    cli("deploy", fn_dir(tmp_path, "bulky", "def handler(event, context):\n    print('made it')\n    return b'z' * 300_000\n"))
    for _ in range(2):
        assert cli("invoke", "bulky", "--raw").exit_code == 0
    r = cli("logs", "bulky", "--json")
    assert r.exit_code == 0, r.stderr
    records = json.loads(r.stdout)["invocations"]
    assert len(records) == 2 and all("made it" in rec["logs"] for rec in records)
    assert all("output_base64" not in rec and "result" not in rec for rec in records), [sorted(rec) for rec in records]
    assert len(r.stdout) < 10_000
    one = cli("logs", records[0]["id"], "--json")  # one invocation by id: the whole record
    assert "output_base64" in json.loads(one.stdout)["invocations"][0]


# -- errors say what to fix --------------------------------------------------------------


def test_unreachable_gateway(cli: Any) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for args in (["ls"], ["info"], ["invoke", "hello"], ["deploy", HELLO], ["rm", "x"], ["logs", "x"], ["result", "0" * 32]):
        expect_error(cli(*args, "--url", url), 7, f"cannot reach spanfaas at {url}: is `spanfaas up` running?")
    r = cli("ls", "--url", url, "--json")
    assert r.exit_code == 7 and json.loads(r.stdout)["status"] == 503


def test_a_gateway_url_that_is_not_http_says_so(cli: Any) -> None:
    # These were "the platform failed" (exit 7) with httpx's own words.
    for url in ("127.0.0.1:8080", "ftp://127.0.0.1", "http://"):
        expect_error(cli("ls", "--url", url), 2, f"the gateway URL '{url}' is not an http(s) URL", "--url http://127.0.0.1:8080")
    expect_error(cli("ls", SPANFAAS_URL="localhost"), 2, "SPANFAAS_URL")


def test_a_gateway_url_that_does_not_parse_says_so(cli: Any, live: Live) -> None:
    # A port that is no number, or a bracket left open, came out as a traceback (exit 1); a port
    # out of range as "is `spanfaas up` running?"; a query as "no such endpoint: GET /" (exit 4).
    for url, reason in (
        ("http://127.0.0.1:abc", "is not a valid URL"),
        ("http://[::1", "is not a valid URL"),
        ("http://127.0.0.1:99999", "is not a valid URL (Port out of range"),
        (f"{live.url}?debug=1", "has a query or a fragment"),
        ("http://127.0.0.1 :8080", "has a space in it"),
    ):
        for args in (["ls", "--url", url], ["ls", "--json", "--url", url]):
            r = cli(*args)
            assert r.exit_code == 2 and "Traceback" not in r.stderr, (url, r.stderr)
            assert f"the gateway URL '{url}' {reason}" in r.stderr and "--url http://127.0.0.1:8080" in r.stderr, r.stderr
        assert json.loads(r.stdout)["type"].endswith("/invalid-request")


def test_tokens_and_scopes(cli: Any, live: Live) -> None:
    expect_error(cli("ls", "--token", "nope"), 3)
    expect_error(cli("ls", SPANFAAS_TOKEN=""), 3, "SPANFAAS_TOKEN")
    expect_error(cli("deploy", HELLO, "--token", live.invoker), 3, "deploy")


def test_bad_manifest_names_the_key(cli: Any, tmp_path: Path) -> None:
    d = Path(fn_dir(tmp_path, "bad", "def handler(e, c): pass\n"))
    (d / "spanfaas.toml").write_text('name = "bad"\nhandler = "main:handler"\n[resources]\nmemroy = 5\n')
    expect_error(cli("deploy", str(d)), 2, "memroy")
    expect_error(cli("deploy", str(tmp_path / "nowhere")), 2, "does not exist")
    notes = tmp_path / "notes.txt"  # was read as a manifest: "Object missing required field `name`"
    notes.write_text("# a function?\n")
    expect_error(cli("deploy", str(notes)), 2, "is neither a function directory nor a .py file")


def test_invoke_timeout_must_be_positive(cli: Any) -> None:
    expect_error(cli("invoke", "hello", "--timeout", "-1"), 2, "timeout must be a positive number of seconds")
    expect_error(cli("invoke", "hello", "--timeout", "0", "--json"), 2, "timeout")


def test_result_wait_timeout_must_be_positive(cli: Any) -> None:
    # `result ID --wait --timeout -1` said "is still queued after -1s" (exit 1), and nan waited forever.
    assert cli("deploy", HELLO).exit_code == 0
    job = cli("invoke", "hello", "--async").stdout.strip()
    for value in ("-1", "0", "nan"):
        expect_error(cli("result", job, "--wait", "--timeout", value), 2, "timeout must be a positive number of seconds")


SLEEPY = "import asyncio\nasync def handler(event, context):\n    await asyncio.sleep(event['sleep'])\n    return 'slept'\n"


def test_result_of_an_unknown_id_gives_a_cli_hint(cli: Any) -> None:
    # The gateway's detail points at GET /v1/invocations?function=NAME; the CLI user gets the command.
    unknown = "f" * 32
    for args in (["result", unknown], ["result", unknown, "--wait", "--timeout", "5"]):
        r = cli(*args)
        expect_error(r, 4, f"invocation '{unknown}' not found; `spanfaas logs FUNCTION` shows a function's recent invocations")
        assert "GET /v1" not in r.stderr
    r = cli("result", unknown, "--json")
    assert r.exit_code == 4 and "spanfaas logs FUNCTION" in json.loads(r.stdout)["detail"]


def test_a_timeout_exits_1_from_invoke_and_from_result(cli: Any, tmp_path: Path) -> None:
    """``invoke --timeout`` exited 7 ("the platform failed") where ``result --wait --timeout``
    exited 1: both are the client giving up on its wait, the documented exit 1."""
    assert cli("deploy", fn_dir(tmp_path, "sleepy", SLEEPY)).exit_code == 0
    expect_error(cli("invoke", "sleepy", "-d", '{"sleep": 1}', "--timeout", "0.2"), 1, "after 0.2s")
    job = cli("invoke", "sleepy", "-d", '{"sleep": 3}', "--async").stdout.strip()
    expect_error(cli("result", job, "--wait", "--timeout", "0.2"), 1, f"invocation {job} is still")
    slow, waited = cli("invoke", "sleepy", "-d", '{"sleep": 1}', "--timeout", "0.2", "--json"), cli("result", job, "--wait", "--timeout", "0.2", "--json")
    assert slow.exit_code == waited.exit_code == 1
    assert json.loads(slow.stdout)["type"] == json.loads(waited.stdout)["type"] == "https://spanfaas.dev/problems/wait-timeout"


def test_result_timeout_waits_without_wait(cli: Any, tmp_path: Path) -> None:
    # `result ID --timeout 5` ignored its timeout: it printed "ID is running" at once, exit 0.
    assert cli("deploy", fn_dir(tmp_path, "sleepy", SLEEPY)).exit_code == 0
    job = cli("invoke", "sleepy", "-d", '{"sleep": 0.5}', "--async").stdout.strip()
    r = cli("result", job, "--timeout", "10")
    assert r.exit_code == 0 and json.loads(r.stdout) == "slept", (r.stdout, r.stderr)
    job = cli("invoke", "sleepy", "-d", '{"sleep": 3}', "--async").stdout.strip()
    expect_error(cli("result", job, "--timeout", "0.2"), 1, f"invocation {job} is still")


def test_invoke_async_refuses_the_options_of_waiting(cli: Any, tmp_path: Path) -> None:
    # `invoke --async --timeout 5 --raw` queued the call and dropped both options without a word.
    assert cli("deploy", fn_dir(tmp_path, "never-queued", SLEEPY)).exit_code == 0  # (a name no other test calls)
    for extra in (["--timeout", "5"], ["--raw"]):
        r = cli("invoke", "never-queued", "--async", *extra)
        expect_error(r, 2, f"{extra[0]} has no effect with --async", "spanfaas result ID --wait")
    r = cli("logs", "never-queued", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["invocations"] == []  # nothing was queued


def test_raw_and_json_together_are_refused(cli: Any) -> None:
    # `invoke --raw --json` and `result ID --raw --json` printed the JSON record and dropped --raw without a word.
    for args in (["invoke", "hello", "--raw"], ["result", "0" * 32, "--raw"]):
        r = cli(*args, "--json")
        expect_error(r, 2, "--raw and --json ask for two kinds of output", "pass one of them")
        assert json.loads(r.stdout)["type"].endswith("/invalid-request")


def test_an_invoke_that_outlasts_its_timeout_names_the_invocation_to_fetch_later(cli: Any, tmp_path: Path) -> None:
    """``invoke --timeout`` gave up with no invocation id: the result was lost to the user."""
    assert cli("deploy", fn_dir(tmp_path, "sleepy", SLEEPY)).exit_code == 0
    r = cli("invoke", "sleepy", "-d", '{"sleep": 1}', "--timeout", "0.2")
    expect_error(r, 1, "still", "after 0.2s", "spanfaas result ")
    job = r.stderr.split("spanfaas result ", 1)[1].split()[0]
    r = cli("result", job, "--wait", "--timeout", "10")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout) == "slept"

    r = cli("invoke", "sleepy", "-d", '{"sleep": 1}', "--timeout", "0.2", "--json")
    assert r.exit_code == 1
    job = json.loads(r.stdout)["invocation_id"]
    assert f"spanfaas result {job} --wait" in r.stderr
    r = cli("result", job, "--wait", "--timeout", "10", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["result"] == "slept"

    r = cli("invoke", "sleepy", "-d", '{"sleep": 0}', "--timeout", "10")  # in time: the result, as without --timeout
    assert r.exit_code == 0 and json.loads(r.stdout) == "slept" and "memory" in r.stderr


def _connected(pid: int, port: int) -> bool:
    """``pid`` holds an established TCP connection to 127.0.0.1:``port``."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    with open("/proc/net/tcp") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return any(r[2] == f"0100007F:{port:04X}" and r[3] == "01" and r[9] in inodes for r in rows)


def _interrupted(live: Live, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``spanfaas ARGS`` in its own process, stopped with Ctrl-C (SIGINT) while it waits."""
    env = {
        **os.environ, "SPANFAAS_URL": live.url, "SPANFAAS_TOKEN": live.admin,
        "XDG_CONFIG_HOME": str(tmp_path / "config"), "PYTHONPATH": str(ROOT), "COLUMNS": "200",
    }  # fmt: skip
    headers = {"Authorization": f"Bearer {live.admin}"}
    known = {x["id"] for x in httpx.get(f"{live.url}/v1/invocations", headers=headers).json()["invocations"]}
    proc = subprocess.Popen(
        [sys.executable, "-m", "spanfaas.cli", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    # Ctrl-C once it waits on the 5 s invocation, not after a guessed time (its
    # start-up alone can take seconds on a loaded machine): it is connected to
    # the gateway and, for ``invoke --timeout``, has queued its invocation (a
    # plain ``invoke`` waits from its first request; ``result`` from its first).
    port = int(live.url.rsplit(":", 1)[1])
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None and time.monotonic() < deadline, "the CLI ended or never waited"
        if _connected(proc.pid, port):
            if "--timeout" not in args:
                break
            listed = httpx.get(f"{live.url}/v1/invocations", headers=headers).json()["invocations"]
            if any(x["id"] not in known for x in listed):
                break
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_ctrl_c_while_waiting_names_the_invocation_that_goes_on(cli: Any, live: Live, tmp_path: Path) -> None:
    """Ctrl-C in ``invoke --timeout`` or ``result --wait`` exited 130 saying nothing: the invocation
    ran on in the gateway, and its id -- the one way to its result -- was never shown."""
    assert cli("deploy", fn_dir(tmp_path, "sleepy", SLEEPY)).exit_code == 0
    r = _interrupted(live, tmp_path, "invoke", "sleepy", "-d", '{"sleep": 5}', "--timeout", "60")
    assert r.returncode == 130, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and "stopped waiting" in r.stderr and "spanfaas result " in r.stderr, r.stderr
    job = r.stderr.split("spanfaas result ", 1)[1].split()[0]
    r = cli("result", job, "--wait", "--timeout", "10")
    assert r.exit_code == 0 and json.loads(r.stdout) == "slept", r.stderr

    job = cli("invoke", "sleepy", "-d", '{"sleep": 5}', "--async").stdout.strip()
    r = _interrupted(live, tmp_path, "result", job, "--wait")
    assert r.returncode == 130 and f"spanfaas result {job} --wait" in r.stderr, (r.returncode, r.stderr)
    r = _interrupted(live, tmp_path, "result", job, "--wait", "--json")
    assert r.returncode == 130 and json.loads(r.stdout)["invocation_id"] == job, (r.stdout, r.stderr)

    r = _interrupted(live, tmp_path, "invoke", "sleepy", "-d", '{"sleep": 5}')  # no id yet: where to find it
    assert r.returncode == 130 and "stopped waiting" in r.stderr and "spanfaas logs sleepy" in r.stderr, r.stderr


def test_up_with_an_unusable_data_dir_says_so(cli: Any, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for data_dir in (blocker / "state", blocker):
        r = cli("up", "--port", "0", "--data-dir", str(data_dir), XDG_DATA_HOME=str(tmp_path / "data"))
        expect_error(r, 2, f"cannot use {data_dir} as the data directory", "--data-dir")


def test_up_with_an_impossible_port_names_the_flag(cli: Any, tmp_path: Path) -> None:
    # It said "invalid settings: Expected `int` <= 65535 - at `$.port`": a setting the user never typed.
    for flag in ("--port", "--dns-port"):
        args = ["up", "--data-dir", str(tmp_path / "state")] + (["--dns", "--port", "0"] if flag == "--dns-port" else [])
        for value in ("99999", "-1"):
            r = cli(*args, flag, value)
            expect_error(r, 2)
            assert r.stderr == f"error: {flag} {value} is not a port; pass 1 to 65535, or 0 to pick a free one\n"
    assert not (tmp_path / "state").exists() and not (tmp_path / "config").exists()  # nothing started, no token made


def test_a_full_function_exits_6_and_leaves_no_failed_invocation(cli: Any, live: Live, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sync call refused by a full function (scaling.max + scaling.queue taken) exited 6,
    but left an invocation recorded as an infra failure: `spanfaas result ID` of it exited 7."""
    from spanfaas.errors import TooManyRequests

    assert cli("deploy", fn_dir(tmp_path, "crowded", "def handler(event, context):\n    return 1\n")).exit_code == 0

    async def full(*args: object, **kw: object) -> object:
        raise TooManyRequests("function 'crowded' has 1 invocation waiting (scaling.queue = 1); retry later or raise scaling.max", retry_after=1)

    monkeypatch.setattr(live.app.state.gateway.infra, "invoke", full)
    expect_error(cli("invoke", "crowded"), 6, "invocation waiting", "retry later")
    r = cli("invoke", "crowded", "--json")
    assert r.exit_code == 6 and json.loads(r.stdout)["status"] == 429
    assert "invocation_id" not in json.loads(r.stdout)  # nothing ran: nothing to fetch later
    r = cli("logs", "crowded", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["invocations"] == [], r.stdout


def test_up_on_an_address_not_of_this_machine_names_the_flag(cli: Any, tmp_path: Path) -> None:
    # With --port 0 the address went unchecked: the gateway started its runtime, uvicorn failed to
    # bind, and the user saw the zygote's BrokenPipeError tracebacks, exit 7, and a config saved for
    # http://192.0.2.1:0 in place of the one of the gateway they had.
    for port in ("0", "8123"):
        r = cli("up", "--host", "192.0.2.1", "--port", port, "--data-dir", str(tmp_path / "state"), XDG_DATA_HOME=str(tmp_path / "data"))
        expect_error(r, 2, "cannot listen on 192.0.2.1", "pass an address of this machine with --host")
        assert "--port" not in r.stderr
    assert not (tmp_path / "state").exists() and not (tmp_path / "config").exists()  # nothing started, no token made


def test_not_found(cli: Any) -> None:
    expect_error(cli("logs", "no-such-thing"), 4, "no invocation or function named 'no-such-thing'")
    expect_error(cli("result", "0" * 32), 4)
    expect_error(cli("rm", "no-such-thing"), 4)


def test_a_mistyped_function_name_is_answered_with_the_name_meant(cli: Any, tmp_path: Path) -> None:
    """``spanfaas invoke helo`` listed the deployed functions, hello among them, without saying
    it was the one meant; ``spanfaas logs helo`` named none at all ('list functions with
    `spanfaas ls`')."""
    for name in ("greeter", "uploader"):
        assert cli("deploy", fn_dir(tmp_path, name, "def handler(event, context):\n    return 1\n")).exit_code == 0
    try:
        expect_error(cli("invoke", "greetr"), 4, "function 'greetr' not found", "did you mean greeter")
        expect_error(cli("invoke", "Greeter", "-d", "{}"), 4, "did you mean greeter")
        expect_error(cli("logs", "greetr"), 4, "no invocation or function named 'greetr'", "did you mean greeter")
        expect_error(cli("rm", "uploadr"), 4, "did you mean uploader")
        r = cli("invoke", "greetr", "--json")
        assert r.exit_code == 4 and "did you mean greeter" in json.loads(r.stdout)["detail"]
    finally:
        for name in ("greeter", "uploader"):
            cli("rm", name)


def test_an_empty_name_or_id_is_refused(cli: Any) -> None:
    # `rm ''` printed "✓ removed" (the gateway's redirect of /v1/functions/ read as success),
    # `result ''` and `logs ''` a msgspec traceback, `invoke ''` "no such endpoint".
    for args in (["rm", ""], ["invoke", ""], ["explain", ""]):
        expect_error(cli(*args), 2, "the function name is empty", "spanfaas ls")
    expect_error(cli("result", ""), 2, "the invocation id is empty")
    expect_error(cli("logs", ""), 2, "name a function or an invocation id")
    r = cli("rm", "", "--json")
    assert r.exit_code == 2 and "removed" not in json.loads(r.stdout)



def test_an_empty_image_or_list_name_is_refused(cli: Any) -> None:
    # `images show ''`, `images rm ''`, `images curate show ''` and `curate remove '' PKG` answered
    # "http://… answered 307 Temporary Redirect …"; `curate add '' PKG` "no such endpoint: PUT
    # /v1/images/lists//packages/PKG" (exit 4); `curate audit ''` listed every list's changes.
    for args in (["images", "show", ""], ["images", "rm", ""]):
        expect_error(cli(*args), 2, "the image id is empty", "spanfaas images ls")
    for args in (["images", "curate", "show", ""], ["images", "curate", "add", "", "numpy"], ["images", "curate", "remove", "", "numpy"],
                 ["images", "curate", "update", "", "--note", "x"], ["images", "curate", "delete", ""]):  # fmt: skip
        r = cli(*args)
        expect_error(r, 2, "the curated list name is empty", "spanfaas images curate ls")
        assert "Redirect" not in r.stderr and "endpoint" not in r.stderr
    expect_error(cli("images", "curate", "audit", ""), 2, "the audit target is empty", "leave it out for every change")

def test_a_path_given_for_a_function_name_says_so(cli: Any) -> None:
    # `invoke examples/hello` (the path just deployed) answered in HTTP terms:
    # "no such endpoint: POST /v1/functions/examples/hello/invoke; GET /openapi.json lists them all".
    for args in (["invoke", "examples/hello"], ["rm", "examples/hello"], ["explain", "examples/hello"]):
        r = cli(*args)
        expect_error(r, 2, "'examples/hello' is a path, not a function name", "spanfaas ls")
        assert "endpoint" not in r.stderr


def test_a_dot_for_a_name_or_id_is_refused(cli: Any) -> None:
    # `rm ..` answered "no such endpoint: DELETE /v1" (exit 4), `rm .` "DELETE is not allowed on /v1/functions":
    # the URL was normalized, and the request went to another endpoint.
    # (`triggers rm ..`: test_a_trigger_id_that_cannot_be_one_is_refused_before_the_request; `result ..`: test_an_invocation_id_that_cannot_be_one_is_refused)
    for args in (["rm", "."], ["rm", ".."], ["invoke", ".."], ["images", "show", ".."]):
        r = cli(*args)
        expect_error(r, 2, "is not a name or an id", "spanfaas ls")
        assert "endpoint" not in r.stderr and "/v1" not in r.stderr


def test_an_invocation_id_that_cannot_be_one_is_refused(cli: Any, live: Live) -> None:
    """``spanfaas result 'ab/../x'`` answered "no such endpoint: GET /v1/invocations/ab/../x" (exit 4):
    the id went into the request's path, where its slashes and dots are steps of the path."""
    for bad in ("ab/../x", "..", "x y", "hello", "0" * 31, "0" * 32 + "/"):
        for args in (["result", bad], ["result", bad, "--wait", "--timeout", "5"]):
            r = cli(*args)
            expect_error(r, 2, f"{bad!r} is not an invocation id", "32 lowercase hexadecimal characters", "spanfaas logs FUNCTION")
            assert "endpoint" not in r.stderr and "/v1" not in r.stderr
    headers = {"Authorization": f"Bearer {live.admin}"}
    for path, shown in (("ab%2F..%2Fx", "ab/../x"), ("nope", "nope"), ("ab/cd", "ab/cd")):
        r = httpx.get(f"{live.url}/v1/invocations/{path}", headers=headers)
        assert r.status_code == 404, r.text
        detail = r.json()["detail"]
        assert f"{shown!r} is not an invocation id" in detail and "32 lowercase hexadecimal characters" in detail, detail
    r = httpx.get(f"{live.url}/v1/invocations/{'0' * 32}", headers=headers)  # the shape of an id: not found, no more
    assert r.status_code == 404 and "not an invocation id" not in r.json()["detail"], r.text


def test_an_empty_id_is_refused_before_the_request(cli: Any) -> None:
    # The gateway redirected "/v1/triggers/" to the list: `triggers rm ""` printed "✓ removed trigger".
    # (The gateway now answers a 404 that says to drop the trailing slash, which reads wrong for a
    # command: the client refuses the empty id itself.  Images: test_an_empty_image_or_list_name_is_refused.)
    # It said "a name or id in the command is empty; name the function, invocation, trigger, list or
    # image (`spanfaas ls` lists the functions)": which one, and where to find it, for this command?
    for args, says in (
        (["triggers", "rm", ""], ("the trigger id is empty", "spanfaas triggers ls")),
        (["events", "dlq", "replay", ""], ("the dead letter id is empty", "spanfaas events dlq ls")),
    ):
        r = cli(*args)
        expect_error(r, 2, *says)
        assert "removed" not in r.stdout and "slash" not in r.stderr and "function, invocation" not in r.stderr


@pytest.mark.parametrize("id", ["a/b", "..", " ", "trg_1 ", "fn:0\n", "x" * 300])
def test_a_trigger_id_that_cannot_be_one_is_refused_before_the_request(cli: Any, id: str) -> None:
    """``triggers rm 'a/b'`` answered "no such endpoint", ``rm ..`` a message about functions and
    images, ``rm ' '`` went to the gateway: refused here, saying what a trigger id looks like."""
    r = cli("triggers", "rm", id)
    expect_error(r, 2, "is not a trigger id", "trg_", "FUNCTION:NAME", "spanfaas triggers ls")
    assert "endpoint" not in r.stderr and "removed" not in r.stdout


def test_replay_all_replays_past_one_page_of_dead_letters(cli: Any, live: Live, tmp_path: Path) -> None:
    """``events dlq replay --all`` ("every dead letter") replayed the newest 1,000 -- one page of
    ``GET /v1/events/dlq`` -- and left the others in the store, saying "replayed 1000 dead letters"."""
    import spanfaas.cli.events
    from spanfaas.model import Event
    from spanfaas.store.events import DeadLetter

    assert cli("deploy", fn_dir(tmp_path, "dlq-paged", "def handler(event, context):\n    return 1\n")).exit_code == 0
    n = spanfaas.cli.events.PAGE + 1
    for i in range(n):
        live.store.put_dead_letter(DeadLetter(
            id=f"dlq-paged-{i:04}", function="dlq-paged", event=Event(attributes={"id": f"e{i}", "source": "/t", "type": "t"}),
            content_type="application/json", payload=b"{}", attempts=1, created_at=1.0 + i, failed_at=2.0 + i,
        ))  # fmt: skip
    r = cli("events", "dlq", "replay", "--all", "-f", "dlq-paged", "--json")
    assert r.exit_code == 0, r.stderr
    assert sorted(x["dead_letter"] for x in json.loads(r.stdout)["replayed"]) == [f"dlq-paged-{i:04}" for i in range(n)]
    assert json.loads(cli("events", "dlq", "ls", "-f", "dlq-paged", "--json").stdout)["dead_letters"] == []


def test_replay_all_pages_past_dead_letters_it_cannot_replay(cli: Any, live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    """``events dlq replay --all`` (no --function) read the newest page again and again: a whole
    page of dead letters that cannot be replayed (no function) or failed again hid every older
    one, which it left, saying to replay them a function at a time.  It pages past them by
    cursor now, replays every replayable one, and names those it skipped."""
    import spanfaas.cli.events

    monkeypatch.setattr(spanfaas.cli.events, "PAGE", 2)
    assert cli("deploy", HELLO).exit_code == 0
    event = Event(attributes={"specversion": "1.0", "id": "e", "source": "/s", "type": "t"}, proxy="cloudevents", trigger="hello:0")
    junk = Event(attributes={"id": "1-0", "source": "redis/s", "stream": "s"}, proxy="redis")
    error = ErrorInfo(kind="infra", type="InvalidEvent", message="entry 1-0 of Redis stream s is no event")
    older = ["pg-ok-1", "pg-ok-2", "pg-gone"]
    skipped = [f"pg-junk-{i}" for i in range(3)]
    for t, i in enumerate(older):  # the oldest: under three newer ones that cannot be replayed
        fn = "pg-not-deployed" if i == "pg-gone" else "hello"
        live.store.put_dead_letter(DeadLetter(id=i, function=fn, event=event, content_type="application/json",
                                              payload=b"{}", failed_at=10.0 + t))  # fmt: skip
    for t, i in enumerate(skipped):
        live.store.put_dead_letter(DeadLetter(id=i, function="", event=junk, content_type="application/json",
                                              error=error, failed_at=20.0 + t))  # fmt: skip
    try:
        r = cli("events", "dlq", "replay", "--all", "--json")
        assert r.exit_code == 4, (r.stdout, r.stderr)  # pg-gone: its function is not deployed
        doc = json.loads(r.stdout)
        assert sorted(x["dead_letter"] for x in doc["replayed"]) == ["pg-ok-1", "pg-ok-2"], doc
        assert [(x["dead_letter"], x["status"]) for x in doc["failed"]] == [("pg-gone", 404)], doc
        assert sorted(doc["skipped"]) == skipped, doc
        assert "skipped 3 dead letters that cannot be replayed" in r.stderr and "pg-junk-0" in r.stderr, r.stderr
        assert "not reached" not in r.stderr, r.stderr
        assert live.store.get_dead_letter("pg-ok-1") is None and live.store.get_dead_letter("pg-gone") is not None
    finally:
        for i in [*skipped, *older]:
            live.store.discard_dead_letter(i)


def test_dlq_rm_removes_dead_letters_by_id_or_all_of_a_function_after_asking(cli: Any, live: Live) -> None:
    """There was no way to remove a dead letter: one that cannot be replayed (or should not be)
    stayed listed for good, and ``replay --all`` named it every time."""
    event = Event(attributes={"specversion": "1.0", "id": "e", "source": "/s", "type": "t"}, proxy="cloudevents")
    letters = {"rm-a": "rm-fn", "rm-b": "rm-fn", "rm-c": "rm-fn", "rm-other": "rm-other-fn"}
    for i, fn in letters.items():
        live.store.put_dead_letter(DeadLetter(id=i, function=fn, event=event, content_type="application/json"))
    try:
        r = cli("events", "dlq", "rm", "rm-a", "--json")
        assert r.exit_code == 0 and json.loads(r.stdout) == {"removed": ["rm-a"]}, (r.stdout, r.stderr)
        assert live.store.get_dead_letter("rm-a") is None
        expect_error(cli("events", "dlq", "rm", "rm-a"), 4, "no dead letter 'rm-a'", "spanfaas events dlq ls")
        r = cli("events", "dlq", "rm", "rm-nope", "rm-b")  # one gone: the others are still removed
        assert r.exit_code == 4 and "rm-b" in r.stdout and "no dead letter 'rm-nope'" in r.stderr, (r.stdout, r.stderr)
        assert "removed 1 of 2 dead letters" in r.stderr and live.store.get_dead_letter("rm-b") is None
        live.store.put_dead_letter(DeadLetter(id="rm-b", function="rm-fn", event=event, content_type="application/json"))

        r = cli("events", "dlq", "rm", "--all", "-f", "rm-fn", input="n\n")  # asked, and answered no
        assert r.exit_code == 1 and "remove 2 dead letters of rm-fn for good?" in r.stderr, (r.stdout, r.stderr)
        assert "nothing removed" in r.stderr and live.store.get_dead_letter("rm-b") is not None
        r = cli("events", "dlq", "rm", "--all", "-f", "rm-fn")  # no answer (no terminal): nothing removed
        assert r.exit_code == 2 and "?" in r.stderr.splitlines()[0], (r.stdout, r.stderr)
        assert r.stderr.splitlines()[1].startswith("error: no answer") and "pass --yes" in r.stderr, r.stderr
        assert live.store.get_dead_letter("rm-b") is not None
        r = cli("events", "dlq", "rm", "--all", "-f", "rm-fn", input="y\n")
        assert r.exit_code == 0 and "removed 2 dead letters" in r.stderr, (r.stdout, r.stderr)
        assert {live.store.get_dead_letter(i) is None for i in ("rm-b", "rm-c")} == {True}
        assert live.store.get_dead_letter("rm-other") is not None  # another function's: kept
        r = cli("events", "dlq", "rm", "--all", "--yes", "--json")
        assert r.exit_code == 0 and "rm-other" in json.loads(r.stdout)["removed"], (r.stdout, r.stderr)
        assert json.loads(cli("events", "dlq", "ls", "--json").stdout)["dead_letters"] == []
        r = cli("events", "dlq", "rm", "--all", "--yes")
        assert r.exit_code == 0 and "no dead letters to remove" in r.stderr, r.stderr

        expect_error(cli("events", "dlq", "rm"), 2, "name the dead letters to remove", "--all")
        expect_error(cli("events", "dlq", "rm", "x", "--all"), 2, "not both")
        expect_error(cli("events", "dlq", "rm", "x", "-f", "rm-fn"), 2, "--function applies to --all")
        expect_error(cli("events", "dlq", "rm", "--all", "-f", ""), 2, "--function is empty")
        expect_error(cli("events", "dlq", "rm", ""), 2, "the dead letter id is empty")
    finally:
        for i in letters:
            live.store.discard_dead_letter(i)


def test_info_and_doctor(cli: Any) -> None:
    r = cli("info")
    assert r.exit_code == 0 and "spanfaas" in r.stdout and "memory" in r.stdout
    assert re.search(r"max_payload\s+\d+\.\d (KiB|MiB|GiB)", r.stdout), r.stdout  # sizes people read, not 33554432
    r = cli("doctor")
    assert r.exit_code == 0 and "✓ gateway" in r.stdout


def test_doctor_without_a_gateway_probes_locally_and_fails(cli: Any) -> None:
    """doctor pointed at a gateway that does not answer exited 0 (its local probe found the
    sandbox's protections), so a script or a health check took the platform for fine.  It
    still shows the local probe, and fails: a message on stderr that says what did not
    answer and how to check this machine alone, and InfraError's exit code."""
    dead = f"http://127.0.0.1:{free_port()}"
    r = cli("doctor", "--url", dead, "--json")
    report = json.loads(r.stdout)
    assert report["reachable"] is False and "cannot reach spanfaas" in report["error"]
    assert report["source"] == "local probe"
    assert {"name", "active", "reason"} <= set(report["protections"][0])
    expect_error(r, 7, f"the gateway at {dead} did not answer", "spanfaas doctor --local")
    r = cli("doctor", "--url", dead)
    expect_error(r, 7, f"the gateway at {dead} did not answer")
    assert f"✗ gateway {dead}: cannot reach spanfaas" in r.stdout and "sandbox protections (from the local probe)" in r.stdout, r.stdout


def test_doctor_local_checks_this_machine_alone(cli: Any) -> None:
    """--local: no gateway is asked (none need run), the local probe and the scratch sweep
    are the checks, and they pass: exit 0."""
    dead = f"http://127.0.0.1:{free_port()}"
    r = cli("doctor", "--local", "--json", SPANFAAS_URL=dead)
    assert r.exit_code == 0, (r.stdout, r.stderr)
    report = json.loads(r.stdout)
    assert report["source"] == "local probe" and report["url"] is None and report["reachable"] is None, report
    assert {"name", "active", "reason"} <= set(report["protections"][0]) and "error" not in report
    r = cli("doctor", "--local", SPANFAAS_URL=dead)
    assert r.exit_code == 0 and r.stderr == "", r.stderr
    assert "gateway not checked (--local)" in r.stdout and "sandbox protections (from the local probe)" in r.stdout, r.stdout
    expect_error(cli("doctor", "--local", "--url", dead), 2, "--local asks no gateway: drop --url")


def test_doctor_fails_when_the_gateway_refuses_the_token(cli: Any) -> None:
    r = cli("doctor", SPANFAAS_TOKEN="sf_not-a-token")
    expect_error(r, 3, "spanfaas doctor --local")
    assert "✗ gateway" in r.stdout, r.stdout


def test_saved_config_is_used(cli: Any, live: Live, tmp_path: Path) -> None:
    from spanfaas.client.userconfig import UserConfig, config_path, save_user_config

    env = {"XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    save_user_config(UserConfig(url=live.url, token=live.admin), config_path(env))
    r = cli("ls", "--json", SPANFAAS_URL="", SPANFAAS_TOKEN="", **env)
    assert r.exit_code == 0, r.stderr
    assert "functions" in json.loads(r.stdout)


def test_hints_that_name_a_manifest_table_show_it(cli: Any) -> None:
    """Rich took '[image]' and '[[triggers]]' for markup: 'a function with an  table in its manifest',
    'declare [] in a manifest'."""
    r = cli("images", "ls")
    assert r.exit_code == 0 and "a function with an [image] table in its manifest" in r.stderr, r.stderr
    r = cli("triggers", "ls")
    assert r.exit_code == 0 and "declare [[triggers]] in a manifest" in r.stderr, r.stderr


def test_logs_all_follows_the_pages_of_the_listing(cli: Any, tmp_path: Path) -> None:
    """The listing had no pages: a function's invocations past the newest 1000 could not be
    listed.  ``logs NAME --all`` follows the pages (here ended by their size: logs of 1 MiB)."""
    cli("deploy", fn_dir(tmp_path, "chatty", "def handler(event, context):\n    print('c' * 1024 * 1024)\n"))
    for _ in range(6):
        assert cli("invoke", "chatty").exit_code == 0
    r = cli("logs", "chatty", "--json", "-n", "1000")
    assert r.exit_code == 0, r.stderr
    assert len(json.loads(r.stdout)["invocations"]) == 6  # the SDK follows next until it has -n of them
    r = cli("logs", "chatty", "--all", "--json")
    assert r.exit_code == 0, r.stderr
    records = json.loads(r.stdout)["invocations"]
    assert len(records) == 6 and len({rec["id"] for rec in records}) == 6
    assert [rec["created_at"] for rec in records] == sorted((rec["created_at"] for rec in records), reverse=True)


def test_logs_filter_by_status(cli: Any, tmp_path: Path) -> None:
    """``spanfaas logs NAME`` had no --status, though the listing (and the SDK) filter by it:
    a function's failures could not be listed apart from its successes."""
    cli("deploy", fn_dir(tmp_path, "picky", "def handler(event, context):\n    print('got', event)\n    assert event != 13, 'unlucky'\n    return event\n"))
    for n in (1, 13, 2):
        cli("invoke", "picky", "-d", str(n))
    r = cli("logs", "picky", "--status", "failed", "--json")
    assert r.exit_code == 0, r.stderr
    assert [(rec["status"], rec["logs"].strip()) for rec in json.loads(r.stdout)["invocations"]] == [("failed", "got 13")]
    r = cli("logs", "picky", "--status", "succeeded")
    assert r.exit_code == 0 and r.stdout.count("succeeded") == 2 and "failed" not in r.stdout, r.stdout
    r = cli("logs", "picky", "--status", "done")
    assert r.exit_code == 2 and "'--status'" in r.stderr and "'succeeded'" in r.stderr, r.stderr
    r = cli("logs", "picky", "--status", "queued")
    assert r.exit_code == 0 and "no queued invocations of picky" in r.stderr, r.stderr


def test_a_logs_limit_out_of_range_names_the_option(cli: Any) -> None:
    """``logs -n 0`` answered in the HTTP API's terms: 'limit=0 is out of range; use 1 to 1000'."""
    for n in ("0", "1001"):
        r = cli("logs", "hello", "-n", n)
        assert r.exit_code == 2 and "'--limit' / '-n'" in r.stderr, r.stderr
        assert "limit=" not in r.stderr


def test_help_lists_the_commands(cli: Any) -> None:
    r = cli("--help")
    for command in ("up", "deploy", "invoke", "result", "ls", "logs", "rm", "info", "doctor"):
        assert command in r.stdout


LITERAL_WORDS = {"policy"}
"""Lower-case words in a usage that are typed as they are (``images curate audit policy``), not placeholders."""


def _commands(command: Any, path: list[str], parent: Any) -> Iterator[tuple[list[str], Any, Any]]:
    ctx = command.context_class(command, info_name=path[-1] if path else "spanfaas", parent=parent)
    yield path, command, ctx
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, [*path, name], ctx)


def _lower_placeholders(text: str) -> list[str]:
    """The words of a usage or a help row's first column, past the option names, not in capitals."""
    words = [w for token in text.split() if not token.startswith(("-", "/")) for w in re.findall(r"[A-Za-z][A-Za-z0-9_]*", token)]
    return [w for w in words if not w.isupper() and w not in LITERAL_WORDS]


def test_every_commands_help_writes_its_placeholders_in_capitals(cli: Any) -> None:
    """Usages mixed three ways of writing what the user fills in: ``deploy {path}``, ``result {ID}``,
    ``--url <str>``, ``--filter ATTRIBUTE=GLOB``, ``<function>.<zone>``.  Capitals are the CLI's
    way (its messages and docs say ``spanfaas result ID``, ``-d @FILE``, ``logs FUNCTION``): every
    command's usage line, argument and option here is walked and held to them."""
    from typer.main import get_command

    seen = 0
    for path, command, ctx in _commands(get_command(app), [], None):
        r = cli(*path, "--help")
        assert r.exit_code == 0, (path, r.stderr)
        assert not re.search(r"<[a-z][^>]*>", r.stdout), (path, r.stdout)  # no '<str>', '<path>', '<function>'
        usage = " ".join(command.collect_usage_pieces(ctx))
        assert _lower_placeholders(usage) == [], (path, usage)
        # As the messages write it (`spanfaas result ID`): typer's `{ID}` read as a shell's "one of".
        assert "{" not in usage and "{" not in r.stdout.split("\n\n")[0], (path, usage)
        for param in command.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                assert _lower_placeholders(record[0]) == [], (path, record[0])
                seen += 1
    assert seen > 100  # every command's options and arguments were looked at


def test_python_dash_m_spanfaas_runs_the_cli() -> None:
    # "No module named spanfaas.__main__; 'spanfaas' is a package and cannot be directly executed".
    r = subprocess.run([sys.executable, "-m", "spanfaas", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "Usage: python -m spanfaas " in r.stdout and "deploy" in r.stdout


def test_the_start_up_hint_names_the_command_as_the_user_can_run_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from spanfaas.cli.platform import command_name

    venv_bin = tmp_path / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    script = venv_bin / "spanfaas"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # the venv is not on PATH (make run)
    assert command_name(str(script)) == ".venv/bin/spanfaas"
    monkeypatch.setenv("PATH", f"{venv_bin}:/usr/bin:/bin")  # an activated venv
    assert command_name(str(script)) == "spanfaas"
    assert command_name("/somewhere/spanfaas/__main__.py") == "spanfaas"  # python -m spanfaas


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("--schedule", "0 3 * * *", "--type", "com.example.*"), ("--schedule", "--type")),
        (("--schedule", "0 3 * * *", "--subject", "*.jpg", "--filter", "shop=b*"), ("--subject", "--filter")),
        (("--type", "com.example.*", "--timezone", "Europe/Berlin"), ("--timezone", "--schedule")),
        (("--type", "com.example.*", "--missed", "all"), ("--missed", "--schedule")),
        (("--schedule", "0 3 * * *", "--missed", "sometimes"), ("--missed", "skip, latest or all")),
    ],
)
def test_triggers_add_refuses_options_it_would_drop(cli: Any, args: tuple[str, ...], fragments: tuple[str, ...]) -> None:
    """``triggers add F --schedule … --type …`` made a schedule and dropped --type without a word (and
    --timezone without --schedule was dropped the same way): the user believed in a filter that was not there."""
    assert cli("deploy", HELLO).exit_code == 0
    expect_error(cli("triggers", "add", "hello", *args), 2, *fragments)
    assert json.loads(cli("triggers", "ls", "-f", "hello", "--json").stdout)["triggers"] == []


@pytest.mark.parametrize(
    ("command", "bad"),
    [(("events", "dlq", "ls"), ("0", "1001")), (("images", "curate", "audit"), ("0", "10001"))],
)
def test_dead_letter_and_audit_limits_out_of_range_name_the_option(cli: Any, command: tuple[str, ...], bad: tuple[str, ...]) -> None:
    """``events dlq ls -n 0`` and ``images curate audit -n 0`` answered in the HTTP API's terms
    ('limit=0 is out of range'), as ``logs`` once did."""
    for n in bad:
        r = cli(*command, "-n", n)
        assert r.exit_code == 2 and "'--limit' / '-n'" in r.stderr, r.stderr
        assert "limit=" not in r.stderr


def test_dlq_replay_of_several_says_which_were_replayed_when_one_fails(cli: Any, live: Live) -> None:
    """``events dlq replay A nope B`` replayed A, then stopped at nope with its error alone: A had
    left the dead-letter store without a word of its new invocation, and B was never tried."""
    assert cli("deploy", HELLO).exit_code == 0
    event = Event(attributes={"specversion": "1.0", "id": "e", "source": "/s", "type": "t"}, proxy="cloudevents", trigger="hello:0")
    for i in ("dl-a", "dl-b"):
        live.store.put_dead_letter(DeadLetter(id=i, function="hello", event=event, content_type="application/json", payload=b"{}"))
    r = cli("events", "dlq", "replay", "dl-a", "dl-nope", "dl-b", "--json")
    assert r.exit_code == 4, r.stderr
    doc = json.loads(r.stdout)
    assert [x["dead_letter"] for x in doc["replayed"]] == ["dl-a", "dl-b"]
    assert [(x["dead_letter"], x["status"]) for x in doc["failed"]] == [("dl-nope", 404)]
    assert "no dead letter 'dl-nope'" in r.stderr and "replayed 2 of 3 dead letters" in r.stderr
    assert live.store.get_dead_letter("dl-a") is None and live.store.get_dead_letter("dl-b") is None


def test_dlq_replay_prints_the_new_invocation_ids_alone_on_stdout(cli: Any, live: Live) -> None:
    """``events dlq replay`` printed "DEAD_LETTER → INVOCATION" lines on stdout: a script had to
    cut the new ids out of them (``result "$(…)"`` got the arrow).  The ids alone now, one a
    line in the order replayed, and what was done on stderr, also when one of them fails."""
    assert cli("deploy", HELLO).exit_code == 0
    event = Event(attributes={"specversion": "1.0", "id": "e", "source": "/s", "type": "t"}, proxy="cloudevents", trigger="hello:0")
    for i in ("ids-a", "ids-b", "ids-c"):
        live.store.put_dead_letter(DeadLetter(id=i, function="hello", event=event, content_type="application/json", payload=b"{}"))
    r = cli("events", "dlq", "replay", "ids-a", "ids-b")
    assert r.exit_code == 0, r.stderr
    ids = r.stdout.splitlines()
    assert len(ids) == 2 and r.stdout == "".join(i + "\n" for i in ids), r.stdout
    for i in ids:
        record = live.store.get_invocation(i)
        assert record is not None and record.event is not None, i
    assert "✓ replayed 2 dead letters" in r.stderr and "ids-a, ids-b" in r.stderr, r.stderr
    r = cli("events", "dlq", "replay", "ids-c", "ids-nope")
    assert r.exit_code == 4, r.stderr
    [one] = r.stdout.splitlines()
    assert live.store.get_invocation(one) is not None, r.stdout
    assert "no dead letter 'ids-nope'" in r.stderr and "replayed 1 of 2 dead letters" in r.stderr, r.stderr


def test_dlq_replay_all_passes_over_entries_that_were_no_events(cli: Any, live: Live) -> None:
    """A Redis entry that was no event is kept as a dead letter of no function, which cannot be
    replayed: ``events dlq replay --all`` must not fail on it every time (nor ``ls`` hide it)."""
    assert cli("deploy", HELLO).exit_code == 0
    event = Event(attributes={"specversion": "1.0", "id": "e", "source": "/s", "type": "t"}, proxy="cloudevents", trigger="hello:0")
    live.store.put_dead_letter(DeadLetter(id="ne-ok", function="hello", event=event, content_type="application/json", payload=b"{}"))
    junk = Event(attributes={"id": "1-0", "source": "redis/s", "stream": "s", "fields": {"x": "1"}}, proxy="redis")
    error = ErrorInfo(kind="infra", type="InvalidEvent", message="entry 1-0 of Redis stream s is no event")
    live.store.put_dead_letter(DeadLetter(id="ne-junk", function="", event=junk, content_type="application/json", error=error))
    try:
        r = cli("events", "dlq", "replay", "--all", "--json")
        assert r.exit_code == 0, r.stderr
        assert [x["dead_letter"] for x in json.loads(r.stdout)["replayed"]] == ["ne-ok"]
        assert json.loads(r.stdout)["skipped"] == ["ne-junk"]
        assert "skipped 1 dead letter that cannot be replayed (`spanfaas events dlq ls` says why): ne-junk" in r.stderr, r.stderr
        r = cli("events", "dlq", "replay", "--all")
        assert r.exit_code == 0 and "no dead letters to replay" in r.stderr, r.stderr
        r = cli("events", "dlq", "ls")
        assert "ne-junk" in r.stdout and "InvalidEvent" in r.stdout, r.stdout
        expect_error(cli("events", "dlq", "replay", "ne-junk"), 2, "cannot be replayed")
    finally:
        live.store.discard_dead_letter("ne-junk")


def test_an_empty_function_filter_on_the_dead_letters_is_refused(cli: Any, live: Live) -> None:
    """``events dlq replay --all -f ""`` replayed every function's dead letters (the client read
    the empty name as "no filter"), and ``dlq ls -f ""`` listed them all."""
    assert cli("deploy", HELLO).exit_code == 0
    event = Event(attributes={"specversion": "1.0", "id": "e", "source": "/s", "type": "t"}, proxy="cloudevents", trigger="hello:0")
    live.store.put_dead_letter(DeadLetter(id="ef-a", function="hello", event=event, content_type="application/json", payload=b"{}"))
    for args in (["events", "dlq", "replay", "--all", "-f", ""], ["events", "dlq", "ls", "-f", ""], ["triggers", "ls", "-f", ""]):
        expect_error(cli(*args), 2, "--function is empty")
    assert live.store.get_dead_letter("ef-a") is not None


def test_dlq_replay_of_several_goes_on_past_one_the_store_refuses(cli: Any, live: Live) -> None:
    """A dead letter the store refuses to queue again (422 value-refused: a value of its event,
    kept by the gateway for a replay once fixed) stopped ``events dlq replay A BAD B`` at BAD,
    as if the gateway were down: B was never tried, and --all stopped alike."""
    assert cli("deploy", HELLO).exit_code == 0
    event = Event(attributes={"specversion": "1.0", "id": "e", "source": "/s", "type": "t"}, proxy="cloudevents", trigger="hello:0")
    for i, payload in (("rf-a", b"{}"), ("rf-bad", b'{"refuse": 1}'), ("rf-b", b"{}")):
        live.store.put_dead_letter(DeadLetter(id=i, function="hello", event=event, content_type="application/json", payload=payload))
    db = sqlite3.connect(live.store.path, isolation_level=None)
    try:
        db.execute("CREATE TRIGGER refuse_replay BEFORE INSERT ON invocations WHEN CAST(NEW.payload AS TEXT) = '{\"refuse\": 1}' "
                   "BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: refuse'); END")  # fmt: skip
        r = cli("events", "dlq", "replay", "rf-a", "rf-bad", "rf-b", "--json")
    finally:
        db.execute("DROP TRIGGER IF EXISTS refuse_replay")
        db.close()
    assert r.exit_code == 2, r.stderr
    doc = json.loads(r.stdout)
    assert [x["dead_letter"] for x in doc["replayed"]] == ["rf-a", "rf-b"], doc
    assert [(x["dead_letter"], x["status"]) for x in doc["failed"]] == [("rf-bad", 422)] and doc["not_tried"] == []
    assert "CHECK constraint failed: refuse" in r.stderr and "replayed 2 of 3 dead letters" in r.stderr
    assert live.store.get_dead_letter("rf-bad") is not None  # kept, to replay once fixed
    live.store.discard_dead_letter("rf-bad")


def test_up_with_dns_it_cannot_serve_says_so_before_anything_starts(cli: Any, tmp_path: Path) -> None:
    """A DNS port in use, or a [dns] address that is no address, failed in the gateway's
    start-up: a wall of tracebacks (uvicorn's, the zygotes' broken pipes), 'cannot listen
    on udp 127.0.0.1:P: None', and 'the gateway could not start' (exit 7)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        r = cli("up", "--port", "0", "--data-dir", str(tmp_path / "state"), "--dns", "--dns-port", str(port))
    expect_error(r, 2, f"the DNS responder cannot listen on udp 127.0.0.1:{port}: Address already in use", "[dns] port")
    conf = tmp_path / "dns.toml"
    conf.write_text('[dns]\nenabled = true\nport = 0\naddress = "no-such-host.invalid"\n')
    r = cli("up", "--port", "0", "--data-dir", str(tmp_path / "state"), SPANFAAS_CONFIG=str(conf))
    expect_error(r, 2, "[dns] address 'no-such-host.invalid' is not an IP address, nor a name that resolves")
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "state").exists() and not (tmp_path / "config").exists()  # nothing started, no token made


def test_a_setting_the_isolation_ignores_is_refused_naming_the_key(cli: Any, tmp_path: Path) -> None:
    # `concurrency = 4` (strict isolation, the default) was deployed, and each instance served one call.
    d = Path(fn_dir(tmp_path, "wide", "def handler(e, c): pass\n"))
    (d / "spanfaas.toml").write_text('name = "wide"\nhandler = "main:handler"\n[resources]\nconcurrency = 4\n')
    expect_error(cli("deploy", str(d)), 2, "resources.concurrency = 4 has no effect with isolation = \"strict\"",
                 'set isolation = "reuse"')
    r = cli("deploy", str(d), "--json")
    assert r.exit_code == 2 and json.loads(r.stdout)["key"] == "resources.concurrency", (r.stdout, r.stderr)
    (d / "spanfaas.toml").write_text('name = "wide"\nhandler = "main:handler"\nisolation = "reuse"\n[scaling]\nprefork = 2\n')
    expect_error(cli("deploy", str(d)), 2, "scaling.prefork = 2 does no more than prefork = 1 with isolation = \"reuse\"")
    assert "wide" not in cli("ls").stdout


def test_a_locality_without_prefer_locality_is_refused_naming_the_key(cli: Any, tmp_path: Path) -> None:
    # `locality = "eu"` alone was deployed, and weighed nothing where the function ran.
    d = Path(fn_dir(tmp_path, "near", "def handler(e, c): pass\n"))
    (d / "spanfaas.toml").write_text('name = "near"\nhandler = "main:handler"\n[policy]\nlocality = "eu"\n')
    expect_error(cli("deploy", str(d)), 2, "policy.locality", 'add it, e.g. prefer = ["locality"]')
    r = cli("deploy", str(d), "--json")
    assert r.exit_code == 2 and json.loads(r.stdout)["key"] == "policy.locality", (r.stdout, r.stderr)
    assert "near" not in cli("ls").stdout


def test_up_without_a_saved_token_says_where_the_token_came_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """A second gateway on a shared store (docs/shared-store.md) printed no token, and told the
    user to pass 'the admin token printed at its first start': it never printed one.  The token
    is the store's, printed when the store was first used, by whichever gateway that was."""
    from spanfaas.cli.platform import _announce

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    _announce("http://127.0.0.1:9", None, False, [], as_json=False)
    out = re.sub(r"\s+", " ", capsys.readouterr().out)
    assert "holds no token of this gateway; pass --url http://127.0.0.1:9 --token TOKEN" in out, out
    assert "printed at its first start" not in out
    assert "a token of its store" in out and "the first gateway started on it" in out


def test_logs_of_a_function_says_when_older_invocations_are_left_out(cli: Any, tmp_path: Path) -> None:
    """`spanfaas logs slow` showed the 20 latest invocations and nothing more, with no word that
    older ones exist: a user looking for the failure of a burst took those for all there were.
    When more are there, stderr says how many were shown and how to see the others."""
    assert cli("deploy", fn_dir(tmp_path, "older", "def handler(event, context):\n    print('call', event)\n    return 1\n")).exit_code == 0
    for i in range(4):
        assert cli("invoke", "older", "-d", str(i)).exit_code == 0
    r = cli("logs", "older", "-n", "3")
    assert r.exit_code == 0 and r.stdout.count("── ") == 3, r.stdout
    assert "call 0" not in r.stdout and "call 3" in r.stdout, r.stdout  # the latest, oldest first
    assert "the 3 latest invocations of older are shown; older ones: --limit N (up to 1000) or --all" in r.stderr, r.stderr
    r = cli("logs", "older", "-n", "4")
    assert r.stdout.count("── ") == 4 and "older ones" not in r.stderr, r.stderr  # all of them: nothing to say
    assert len(json.loads(cli("logs", "older", "-n", "3", "--json").stdout)["invocations"]) == 3
    assert cli("logs", "older", "--all").stdout.count("── ") == 4


def test_the_cli_finds_the_token_kept_for_the_gateway_it_is_pointed_at(live: Live, tmp_path: Path) -> None:
    """A second `spanfaas up` keeps the first gateway's config in config-HOST-PORT.toml; `spanfaas
    --url FIRST ...` sent no token (exit 3) until the user copied it out of that file."""
    from spanfaas.client.userconfig import UserConfig, config_path, keep_replaced, save_user_config

    env = {"XDG_CONFIG_HOME": str(tmp_path / "cfg"), "COLUMNS": "200"}
    path = config_path(env)
    save_user_config(UserConfig(url=live.url, token=live.admin), path)
    newer = UserConfig(url=f"http://127.0.0.1:{free_port()}", token="sf_of_another_gateway")
    assert keep_replaced(newer, path) is not None
    save_user_config(newer, path)
    runner = CliRunner()

    def run(*args: str, **extra: str | None) -> Result:
        return runner.invoke(app, list(args), env={"SPANFAAS_URL": None, "SPANFAAS_TOKEN": None, **env, **extra}, catch_exceptions=False)

    r = run("ls", "--url", live.url, "--json")
    assert r.exit_code == 0, r.stderr
    assert "functions" in json.loads(r.stdout)
    assert run("ls", "--json", SPANFAAS_URL=live.url).exit_code == 0
    expect_error(run("ls", "--url", live.url, "--token", "sf_wrong"), 3)  # a flag beats the kept file
    expect_error(run("ls", "--url", live.url, SPANFAAS_TOKEN="sf_wrong"), 3)  # and so does the env


def test_version_is_printed_without_a_gateway(cli: Any) -> None:
    """``spanfaas --version`` (the first thing tried to see what is installed) was "No such
    option: --version", exit 2; `spanfaas info` tells it only with a gateway up."""
    import spanfaas

    r = cli("--version", SPANFAAS_URL="http://127.0.0.1:1")  # nothing asked of a gateway
    assert r.exit_code == 0, (r.stdout, r.stderr)
    assert r.stdout == f"spanfaas {spanfaas.__version__}\n" and r.stderr == ""
    r = cli("--help")
    assert r.exit_code == 0 and "--version" in r.stdout and "Commands:" in r.stdout
    r = cli()  # no arguments: the help, as before
    assert "Commands:" in r.stdout + r.stderr


def test_a_saved_gateway_that_is_down_names_the_gateways_kept_beside_it(live: Live, tmp_path: Path) -> None:
    """A second `spanfaas up` (another --data-dir, --port 0), since stopped, left its URL in
    config.toml: every command said "cannot reach spanfaas at http://127.0.0.1:PORT: is
    `spanfaas up` running?" while the first gateway ran on, its token kept in
    config-HOST-PORT.toml -- with no word of it, or of the --url that reaches it."""
    from spanfaas.client.userconfig import UserConfig, config_path, keep_replaced, save_user_config

    env = {"XDG_CONFIG_HOME": str(tmp_path / "cfg"), "COLUMNS": "200"}
    path = config_path(env)
    save_user_config(UserConfig(url=live.url, token=live.admin), path)
    dead = f"http://127.0.0.1:{free_port()}"
    newer = UserConfig(url=dead, token="sf_of_a_gateway_since_stopped")
    assert keep_replaced(newer, path) is not None
    save_user_config(newer, path)
    runner = CliRunner()

    def run(*args: str) -> Result:
        return runner.invoke(app, list(args), env={"SPANFAAS_URL": None, "SPANFAAS_TOKEN": None, **env}, catch_exceptions=False)

    expect_error(run("ls"), 7, f"cannot reach spanfaas at {dead}: is `spanfaas up` running?",
                 f"a token is kept for another gateway: --url {live.url}")  # fmt: skip
    r = run("ls", "--json")
    assert r.exit_code == 7 and f"--url {live.url}" in json.loads(r.stdout)["detail"]
    assert run("ls", "--url", live.url).exit_code == 0  # the hint works as said
    expect_error(run("ls", "--url", dead), 7)
    (path.parent / "config-127.0.0.1-1.toml").write_text("not toml [")  # an unreadable kept file: no hint from it, no error
    expect_error(run("ls"), 7, f"--url {live.url}")


def test_show_describes_one_function(cli: Any, tmp_path: Path) -> None:
    """One function's record (its manifest as deployed, version, image) was only in `ls --json`,
    among all the others; `spanfaas describe NAME` / `show NAME`: "No such command"."""
    d = fn_dir(tmp_path, "shown", "def handler(event, context):\n    return 1\n")
    with open(Path(d) / "spanfaas.toml", "a") as f:
        f.write('description = "says [bold]hi[/bold]"\n[env]\nGREETING = "hey"\n[resources]\nmemory = 128\ntimeout = 7\n')
    assert cli("deploy", d).exit_code == 0
    try:
        r = cli("show", "shown")
        assert r.exit_code == 0, r.stderr
        for said in ("shown · version 1", "handler      main:handler", "says [bold]hi[/bold]", "memory 128 MiB", "timeout 7 s",
                     "isolation    strict", "GREETING", "spanfaas invoke shown"):  # fmt: skip
            assert said in r.stdout + r.stderr, (said, r.stdout)
        assert "hey" not in r.stdout  # env values are secrets: the names alone
        doc = json.loads(cli("show", "shown", "--json").stdout)
        assert doc["name"] == "shown" and doc["spec"]["env"] == {"GREETING": "hey"}
        expect_error(cli("show", "shwon"), 4, "function 'shwon' not found", "shown")
    finally:
        cli("rm", "shown")


@pytest.mark.parametrize(
    ("typed", "meant"),
    [("describe", "show"), ("list", "ls"), ("delete", "rm"), ("remove", "rm"), ("call", "invoke"), ("run", "invoke"),
     ("log", "logs"), ("status", "doctor"), ("version", "info")],  # fmt: skip
)
def test_another_platforms_command_name_is_answered_with_spanfaas_one(cli: Any, typed: str, meant: str) -> None:
    """``spanfaas describe hello``, ``spanfaas list``, ``spanfaas delete hello`` (kubectl's, other
    FaaS CLIs' words): "No such command", or a suggestion only by spelling ('bogus': 'logs')."""
    r = cli(typed, "hello")
    assert r.exit_code == 2, (r.stdout, r.stderr)
    assert f"No such command '{typed}'. Did you mean '{meant}'?" in r.stderr, r.stderr
    r = cli(typed, "--json")
    assert r.exit_code == 2 and f"Did you mean '{meant}'?" in json.loads(r.stdout)["detail"]
