"""``spanfaas images …`` and ``spanfaas deploy`` of a function with an [image],
through Typer's CliRunner against a real gateway app on uvicorn (in-memory
infrastructure, real uv on tiny wheels)."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from click.testing import Result
from typer.testing import CliRunner

from spanfaas.cli import app
from spanfaas.config import ImageSettings, Settings
from spanfaas.gateway import create_app
from spanfaas.gateway.auth import issue_token
from spanfaas.infra.memory import InMemoryInfrastructure
from spanfaas.store import SQLiteStore

Cli = Callable[..., Result]


@contextlib.contextmanager
def serving(tmp_path: Path, wheelhouse: Path, **images: Any) -> Iterator[Cli]:
    """A gateway on uvicorn (in a thread) and a way to run the CLI against it."""
    store = SQLiteStore(tmp_path / "data" / "spanfaas.db")
    settings = Settings(data_dir=str(tmp_path / "data"), images=ImageSettings(offline=True, find_links=[str(wheelhouse)], **images))
    tokens = {"admin": issue_token(store, "ops-alice", ["admin"])[1], "deploy": issue_token(store, "dev-bob", ["deploy"])[1]}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings, store, InMemoryInfrastructure()), host="127.0.0.1", port=port, log_level="warning", ws="none"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.01)
    runner = CliRunner()

    def run(*args: str, scope: str = "admin") -> Result:
        env = {"SPANFAAS_URL": f"http://127.0.0.1:{port}", "SPANFAAS_TOKEN": tokens[scope], "XDG_CONFIG_HOME": str(tmp_path / "cfg"), "COLUMNS": "200"}
        return runner.invoke(app, list(args), env=env, catch_exceptions=False)

    try:
        yield run
    finally:
        server.should_exit = True
        thread.join(10)
        store.close()


@pytest.fixture
def cli(tmp_path: Path, wheelhouse: Path) -> Iterator[Cli]:
    with serving(tmp_path, wheelhouse) as run:
        yield run


def ok(r: Result) -> Result:
    assert r.exit_code == 0, (r.exit_code, r.stdout, r.stderr)
    return r


def test_curate_build_deploy_inspect_and_remove(cli: Cli, tmp_path: Path) -> None:
    r = ok(cli("images", "curate", "create", "tools", "tinycalc>=1,<3", "--note", "small things", "--owner", "platform"))
    assert r.stdout == "tools\n" and "✓ created list tools with 1 package" in r.stderr, (r.stdout, r.stderr)  # what it made, alone
    r = ok(cli("images", "curate", "add", "tools", "tinyhelper>=1"))
    assert r.stdout == "" and "✓ approved tinyhelper>=1 on tools" in r.stderr, (r.stdout, r.stderr)  # a confirmation, not data
    assert "tinycalc>=1,<3" in ok(cli("images", "curate", "ls")).stdout
    assert "tinyhelper" in ok(cli("images", "curate", "show", "tools")).stdout
    r = cli("images", "curate", "add", "tools", "lonely", scope="deploy")
    assert r.exit_code == 3 and "needs scope 'admin'" in r.stderr
    audit = json.loads(ok(cli("images", "curate", "audit", "tools", "--json")).stdout)["entries"]
    assert [(e["actor"], e["action"]) for e in audit] == [("ops-alice", "package.add"), ("ops-alice", "list.create")]
    assert "dependencies of requested packages are resolved freely" in ok(cli("images", "curate", "policy")).stdout

    fn = tmp_path / "calc"
    fn.mkdir()
    (fn / "handler.py").write_text("def handler(event, context):\n    return 1\n")
    (fn / "spanfaas.toml").write_text('name = "calc"\nisolation = "reuse"\n[image]\npackages = ["tinycalc"]\nlists = ["tools"]\n')
    r = ok(cli("deploy", str(fn), scope="deploy"))
    assert "resolve" in r.stderr and "+ tinycalc==2.0" in r.stderr and "built in" in r.stderr  # the build log, then
    assert "2 packages)" in r.stderr  # tinycalc and tinyhelper
    assert "deployed calc version 1" in r.stderr and r.stdout == "calc\n"
    r = ok(cli("images", "build", str(fn), scope="deploy"))
    assert "reused in" in r.stderr
    # `id=$(spanfaas images build DIR)` got nothing: the id was on stderr only
    image_id = r.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", image_id) and r.stdout == image_id + "\n", (r.stdout, r.stderr)
    assert json.loads(ok(cli("images", "build", str(fn), "--json", scope="deploy")).stdout)["image"]["id"] == image_id

    (listed,) = json.loads(ok(cli("images", "ls", "--json")).stdout)["images"]
    assert listed["used_by"] == ["calc"] and listed["id"] == image_id
    short = listed["id"][:12]
    assert "calc" in ok(cli("images", "ls")).stdout
    shown = ok(cli("images", "show", short)).stdout
    assert "needed by tinycalc" in shown and "used by: calc" in shown
    r = cli("images", "rm", short)
    assert r.exit_code == 5 and "in use by calc" in r.stderr
    ok(cli("rm", "calc"))
    r = ok(cli("images", "gc"))
    # a status line on stderr, nothing on stdout (it printed its summary on stdout)
    assert r.stdout == "" and "✓ removed 1 image, freed " in r.stderr and "0 in use" in r.stderr, (r.stdout, r.stderr)

    (fn / "spanfaas.toml").write_text('name = "calc"\n[image]\npackages = ["tinyhelper"]\nlists = ["tools"]\n')
    r = ok(cli("images", "build", str(fn), scope="deploy"))
    assert "1 package)" in r.stderr, r.stderr  # it said "(…, 1 packages)"
    gc = json.loads(ok(cli("images", "gc", "--json")).stdout)  # the one document, for scripts
    assert len(gc["removed"]) == 1 and gc["kept"] == [] and gc["freed"] > 0, gc

    (fn / "spanfaas.toml").write_text('name = "calc"\n[image]\npackages = ["tinycalc>=3"]\nlists = ["tools"]\n')
    r = cli("deploy", str(fn), scope="deploy")
    assert r.exit_code == 2 and "tinycalc>=3 is outside the approved range: tinycalc>=1,<3 (list tools)" in r.stderr


def test_a_deploy_whose_image_build_times_out_exits_as_a_platform_failure(tmp_path: Path, wheelhouse: Path) -> None:
    fn = tmp_path / "calc"
    fn.mkdir()
    (fn / "handler.py").write_text("def handler(event, context):\n    return 1\n")
    (fn / "spanfaas.toml").write_text('name = "calc"\n[image]\npackages = ["tinycalc"]\nlists = ["tools"]\n')
    with serving(tmp_path, wheelhouse, build_timeout=0.001) as cli:
        ok(cli("images", "curate", "create", "tools", "tinycalc>=1,<3", "tinyhelper"))
        for command in (("deploy", str(fn)), ("images", "build", str(fn))):
            r = cli(*command, scope="deploy")
            assert r.exit_code == 7, (command, r.exit_code, r.stderr)  # InfraError's code, not 2 (a bad request)
            assert "did not finish within 0.001 s" in r.stderr and "build_timeout" in r.stderr, r.stderr
        r = cli("deploy", str(fn), "--json", scope="deploy")
        assert r.exit_code == 7 and json.loads(r.stdout)["status"] == 504


def test_images_build_of_a_path_that_is_not_a_function_says_so(cli: Cli, tmp_path: Path) -> None:
    """A mistyped path was told it 'has no [image] table in its spanfaas.toml', as was a
    directory without any spanfaas.toml; deploy says what is really wrong, and so does build now."""
    r = cli("images", "build", str(tmp_path / "no-such-dir"))
    assert r.exit_code == 2 and "does not exist" in r.stderr and "[image]" not in r.stderr, r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    r = cli("images", "build", str(empty))
    assert r.exit_code == 2 and "no spanfaas.toml in" in r.stderr and "[image]" not in r.stderr, r.stderr


def test_curate_update_with_nothing_to_change_says_so(cli: Cli) -> None:
    """`spanfaas images curate update tools` printed '✓ updated list tools' and left a
    'list.update' with an empty WHAT in the audit trail."""
    ok(cli("images", "curate", "create", "tools", "tinycalc"))
    r = cli("images", "curate", "update", "tools")
    assert r.exit_code == 2 and "--note" in r.stderr and "--owner" in r.stderr, r.stderr
    audit = json.loads(ok(cli("images", "curate", "audit", "tools", "--json")).stdout)["entries"]
    assert [e["action"] for e in audit] == ["list.create"]


def test_the_audit_trail_reads_as_changes_not_as_python_dicts(cli: Cli) -> None:
    """WHAT showed \"note: {'from': 'tiny', 'to': 'new'}\", 'from: >=1,<3, to: >=2, note: ' and
    'specifier: ' for an approval of any version."""
    ok(cli("images", "curate", "create", "tools", "tinycalc>=1,<3", "--note", "tiny"))
    ok(cli("images", "curate", "update", "tools", "--note", "small things"))
    ok(cli("images", "curate", "add", "tools", "tinycalc>=2"))
    ok(cli("images", "curate", "add", "tools", "tinyhelper"))
    ok(cli("images", "curate", "policy", "--require-transitive"))
    out = ok(cli("images", "curate", "audit")).stdout
    for line in ("note: 'tiny' → 'small things'", "specifier: >=1,<3 → >=2", "specifier: any version",
                 "require_transitive: false → true", "packages: tinycalc>=1,<3"):  # fmt: skip
        assert line in out, (line, out)
    assert "{'from'" not in out and "note: ," not in out and not out.rstrip().endswith("note:")


def test_curate_add_and_remove_of_several_packages_say_what_they_changed(cli: Cli) -> None:
    """'curate remove tools tinycalc nothere' withdrew tinycalc, then stopped at nothere
    with its error alone; 'add' of a package twice applied both ranges one after the
    other, and 'add tools tinyhelper bad>=x' approved tinyhelper before failing."""

    def approved() -> list[str]:
        lst = json.loads(ok(cli("images", "curate", "show", "tools", "--json")).stdout)
        return [p["name"] + p["specifier"] for p in lst["packages"]]

    ok(cli("images", "curate", "create", "tools", "tinycalc"))
    r = cli("images", "curate", "remove", "tools", "tinycalc", "nothere")
    assert r.exit_code == 4 and "'nothere' is not on curated list 'tools'" in r.stderr and "nothing was withdrawn" in r.stderr, r.stderr
    assert approved() == ["tinycalc"]
    r = cli("images", "curate", "add", "tools", "tinyhelper>=1", "TinyHelper<3")
    assert r.exit_code == 2 and "names tinyhelper twice" in r.stderr, r.stderr
    r = cli("images", "curate", "add", "tools", "tinyhelper", "bad>=x")
    assert r.exit_code == 2 and "'bad>=x' is not a valid requirement" in r.stderr, r.stderr
    assert approved() == ["tinycalc"]  # nothing was changed by either
    r = cli("images", "curate", "add", "tools", "tinyhelper>=1", "other<1,>2", "last")  # the gateway refuses the second
    assert r.exit_code == 2 and "allows no version" in r.stderr, r.stderr
    assert "tinyhelper>=1 was approved already; not tried: last" in r.stderr, r.stderr
    assert approved() == ["tinycalc", "tinyhelper>=1"]


def test_curate_add_refuses_extras_markers_and_urls_instead_of_dropping_them(cli: Cli) -> None:
    """The client split 'six; python_version < "3"' into six and its (empty) range and
    sent that: the list approved six, any version, and said '✓ approved six (any version)'."""
    ok(cli("images", "curate", "create", "tools"))
    for text, words in (("tinycalc[fast]", "names extras"), ('tinycalc>=1; python_version < "3"', "environment marker"),
                        ("tinycalc @ https://example.invalid/tinycalc-1.0-py3-none-any.whl", "direct reference")):  # fmt: skip
        r = cli("images", "curate", "add", "tools", text)
        assert r.exit_code == 2 and words in r.stderr, (text, r.stderr)
    assert json.loads(ok(cli("images", "curate", "show", "tools", "--json")).stdout)["packages"] == []


def test_curate_add_and_remove_confirm_on_stderr(cli: Cli) -> None:
    """``images curate add`` and ``remove`` printed their ✓ lines on stdout, where the CLI puts
    only what a script takes: they are confirmations, on stderr; ``--json`` is the document."""
    ok(cli("images", "curate", "create", "tools"))
    r = ok(cli("images", "curate", "add", "tools", "tinycalc>=1,<3", "tinyhelper"))
    assert r.stdout == "", r.stdout
    assert "✓ approved tinycalc>=1,<3 on tools" in r.stderr and "✓ approved tinyhelper (any version) on tools" in r.stderr, r.stderr
    r = ok(cli("images", "curate", "add", "tools", "tinycalc>=2", "--json"))
    assert [(p["name"], p["specifier"]) for p in json.loads(r.stdout)["packages"]] == [("tinycalc", ">=2")], r.stdout
    r = ok(cli("images", "curate", "remove", "tools", "tinyhelper"))
    assert r.stdout == "" and "✓ withdrew tinyhelper from tools" in r.stderr, (r.stdout, r.stderr)
    assert json.loads(ok(cli("images", "curate", "remove", "tools", "tinycalc", "--json")).stdout) == {"list": "tools", "removed": ["tinycalc"]}


def test_setting_the_policy_says_it_was_set(cli: Cli) -> None:
    """``curate policy --require-transitive`` printed the same line as ``curate policy`` reading it:
    nothing said the policy had changed, nor what it does to functions already running."""
    shown = ok(cli("images", "curate", "policy")).stdout
    assert "✓" not in shown and "dependencies of requested packages are resolved freely" in shown
    r = ok(cli("images", "curate", "policy", "--require-transitive"))
    assert r.stdout == "" and r.stderr.startswith("✓ policy set: dependencies of requested packages must be approved by a selected list too"), r.stderr
    assert "new deploys and builds" in r.stderr
    r = ok(cli("images", "curate", "policy", "--no-require-transitive"))
    assert r.stdout == "" and r.stderr.startswith("✓ policy set: dependencies of requested packages are resolved freely"), r.stderr
    assert json.loads(ok(cli("images", "curate", "policy", "--require-transitive", "--json")).stdout) == {"require_transitive": True}


def test_the_rejection_docs_images_md_shows_is_what_the_cli_prints(cli: Cli, tmp_path: Path) -> None:
    """docs/images.md showed the rejection folded over four lines, where the CLI prints one
    line: a reader grepping for it, or comparing, found another message.  The doc's block is
    the CLI's stderr for the request it describes, exactly."""
    doc = (Path(__file__).parents[3] / "docs" / "images.md").read_text(encoding="utf-8")
    shown = re.search(r"A rejection is a 400 that names each\s+offending package and what is allowed.*?```\n(.*?)```", doc, re.S)
    assert shown is not None, "docs/images.md lost its rejection example"
    ok(cli("images", "curate", "create", "science", "numpy>=1.26,<3"))
    ok(cli("images", "curate", "create", "web", "requests"))
    fn = tmp_path / "stats"
    fn.mkdir()
    (fn / "handler.py").write_text("def handler(event, context):\n    return 1\n")
    (fn / "spanfaas.toml").write_text('name = "stats"\n[image]\npackages = ["numpy>=3", "requests"]\nlists = ["science"]\n')
    r = cli("deploy", str(fn), scope="deploy")
    assert r.exit_code == 2, (r.stdout, r.stderr)
    assert r.stderr == shown.group(1), (r.stderr, shown.group(1))


def test_curate_add_keeps_a_range_as_written_as_create_does(cli: Cli) -> None:
    """`curate create tools 'tinycalc>=1,<3'` showed 'tinycalc>=1,<3', but `curate add` of the
    same range said '✓ approved tinycalc<3,>=1', and the list, the audit trail and the
    refusals of deploys then read it backwards: the client sent packaging's sorted form."""
    ok(cli("images", "curate", "create", "tools"))
    assert "approved tinycalc>=1,<3 on tools" in ok(cli("images", "curate", "add", "tools", "tinycalc >= 1, <3")).stderr
    assert "approved tinyhelper>=1 on tools" in ok(cli("images", "curate", "add", "tools", "tinyhelper (>=1)")).stderr
    packages = json.loads(ok(cli("images", "curate", "show", "tools", "--json")).stdout)["packages"]
    assert [(p["name"], p["specifier"]) for p in packages] == [("tinycalc", ">=1,<3"), ("tinyhelper", ">=1")]


def test_curate_add_of_a_new_range_keeps_the_note(cli: Cli) -> None:
    """``curate add tools 'tinycalc>=2'`` cleared the note the approval had: the CLI sent
    ``"note": ""`` when no --note was given; a bare name now sends '*' (any version)."""
    ok(cli("images", "curate", "create", "tools"))
    ok(cli("images", "curate", "add", "tools", "tinycalc>=1,<3", "--note", "numerics"))
    ok(cli("images", "curate", "add", "tools", "tinycalc>=2"))
    ok(cli("images", "curate", "add", "tools", "tinyhelper"))
    lst = json.loads(ok(cli("images", "curate", "show", "tools", "--json")).stdout)
    assert [(p["name"], p["specifier"], p["note"]) for p in lst["packages"]] == [("tinycalc", ">=2", "numerics"), ("tinyhelper", "", "")]
    ok(cli("images", "curate", "add", "tools", "tinycalc", "--note", ""))
    lst = json.loads(ok(cli("images", "curate", "show", "tools", "--json")).stdout)
    assert [(p["name"], p["specifier"], p["note"]) for p in lst["packages"]][0] == ("tinycalc", "", "")


def test_a_version_uv_cannot_resolve_is_said_once(cli: Cli, tmp_path: Path) -> None:
    """uv's error was printed twice by `spanfaas deploy`: streamed as the build log, then again
    in the error message that ends the command."""
    ok(cli("images", "curate", "create", "tools", "tinycalc"))
    fn = tmp_path / "calc"
    fn.mkdir()
    (fn / "handler.py").write_text("def handler(event, context):\n    return 1\n")
    (fn / "spanfaas.toml").write_text('name = "calc"\n[image]\npackages = ["tinycalc==9"]\nlists = ["tools"]\n')
    for command in (("deploy", str(fn)), ("images", "build", str(fn))):
        r = cli(*command, scope="deploy")
        assert r.exit_code == 2, (command, r.exit_code, r.stderr)
        lines = [line.strip() for line in r.stderr.splitlines() if "tinycalc" in line and "9" in line]
        assert lines and len(lines) == len(set(lines)), r.stderr  # each of uv's lines once
        assert "uv could not resolve the image (uv's output is above)" in r.stderr, r.stderr
    r = cli("deploy", str(fn), "--json", scope="deploy")
    assert r.exit_code == 2 and "tinycalc" in json.loads(r.stdout)["detail"]  # a script still gets uv's words


def test_commands_that_change_something_print_nothing_on_stdout(cli: Cli, tmp_path: Path) -> None:
    """``rm``, ``images rm``, ``triggers rm``, ``curate update``/``delete`` and ``curate policy``
    setting it printed their ✓ lines on stdout, against the CLI's rule that status lines go to
    stderr: ``x=$(spanfaas rm f)`` captured '✓ removed f'.  They confirm on stderr; ``--json``
    is still the one document on stdout."""
    fn = tmp_path / "walk"
    fn.mkdir()
    (fn / "handler.py").write_text("def handler(event, context):\n    return 1\n")
    (fn / "spanfaas.toml").write_text('name = "walk"\n[image]\npackages = ["tinycalc"]\nlists = ["base"]\n')
    ok(cli("images", "curate", "create", "base", "tinycalc"))
    image_id = ok(cli("images", "build", str(fn), scope="deploy")).stdout.strip()
    ok(cli("deploy", str(fn), scope="deploy"))
    trigger_id = ok(cli("triggers", "add", "walk", "--type", "com.example.walk")).stdout.strip()
    ok(cli("images", "curate", "create", "tools"))
    walk: list[tuple[list[str], str]] = [
        (["triggers", "rm", trigger_id], f"✓ removed trigger {trigger_id}"),
        (["rm", "walk"], "✓ removed walk"),
        (["images", "rm", image_id[:12]], "✓ removed image"),
        (["images", "curate", "update", "tools", "--note", "small"], "✓ updated list tools"),
        (["images", "curate", "policy", "--require-transitive"], "✓ policy set: dependencies of requested packages must be approved"),
        (["images", "curate", "policy", "--no-require-transitive"], "✓ policy set: dependencies of requested packages are resolved freely"),
        (["images", "curate", "delete", "tools"], "✓ deleted list tools"),
    ]
    for args, said in walk:
        r = ok(cli(*args))
        assert r.stdout == "" and said in r.stderr, (args, r.stdout, r.stderr)
    # --json: the document, alone, on stdout
    ok(cli("images", "curate", "create", "tools"))
    ok(cli("deploy", str(fn), scope="deploy"))
    assert json.loads(ok(cli("images", "curate", "update", "tools", "--note", "x", "--json")).stdout)["note"] == "x"
    assert json.loads(ok(cli("images", "curate", "delete", "tools", "--json")).stdout) == {"deleted": "tools"}
    assert json.loads(ok(cli("rm", "walk", "--json")).stdout) == {"removed": "walk"}
