"""``spanfaas triggers …`` and ``spanfaas events …`` against a real gateway process:
a trigger added from the command line starts a failing function, its event
lands in the dead-letter store after its retries, and a replay runs it again."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
from typer.testing import CliRunner

from spanfaas.cli import app
from spanfaas.gateway import pack_function
from spanfaas.gateway.testing import GatewayProcess

FLAKY = """
import os
def handler(event, context):
    if not os.path.exists(event["data"]["flag"]):
        raise RuntimeError("the flag is not there yet")
    return {"ok": context.event["id"], "shop": context.event["shop"]}
"""


def test_triggers_and_dead_letters_from_the_command_line(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[events]\nretries = 1\nbackoff = 0.05\n")
    fn = tmp_path / "flaky"
    fn.mkdir()
    (fn / "handler.py").write_text(FLAKY)
    (fn / "spanfaas.toml").write_text('name = "flaky"\nisolation = "reuse"\n')
    runner = CliRunner()
    gw = GatewayProcess(tmp_path / "data", env={"SPANFAAS_CONFIG": str(config)})
    try:
        gw.start()
        env = {"SPANFAAS_URL": gw.url, "SPANFAAS_TOKEN": gw.admin_token or ""}

        def cli(*args: str) -> str:
            result = runner.invoke(app, list(args), env=env)
            assert result.exit_code == 0, result.output
            return result.stdout

        with httpx.Client(base_url=gw.url, headers=gw.headers, timeout=30) as c:
            assert c.put("/v1/functions/flaky", content=pack_function(fn)).status_code == 201
        added = json.loads(cli("triggers", "add", "flaky", "--type", "com.example.*", "--filter", "shop=b*", "--json"))
        assert added["id"].startswith("trg_") and added["trigger"]["filters"] == {"shop": "b*"}
        assert added["id"] in cli("triggers", "ls")
        bad = runner.invoke(app, ["triggers", "add", "flaky", "--schedule", "every day"], env=env)
        assert bad.exit_code == 2 and "cron" in bad.output

        flag = tmp_path / "flag"
        event = json.dumps({"flag": str(flag)})
        assert "matched no trigger" in cli("events", "send", "--type", "com.example.order", "-d", event)  # no shop attribute
        published = json.loads(
            runner.invoke(app, ["events", "send", "--type", "com.example.order", "--id", "e-1", "-d", event, "--json"], env=env).stdout
        )
        assert published["invocations"] == []  # still no shop: filters need the attribute
        # an extension attribute set from the command line (--ext): the trigger's filter matches it
        [inv] = cli("events", "send", "--type", "com.example.order", "--id", "e-2", "--source", "/cli",
                    "--ext", "shop=berlin", "-d", event).split()  # fmt: skip
        deadline = time.monotonic() + 10
        while not (letters := json.loads(cli("events", "dlq", "ls", "--json"))["dead_letters"]):
            assert time.monotonic() < deadline, "no dead letter"
            time.sleep(0.05)
        assert [(d["id"], d["attempts"], d["error"]["message"]) for d in letters] == [(inv, 2, "the flag is not there yet")]
        assert inv in cli("events", "dlq", "ls")

        with httpx.Client(base_url=gw.url, headers=gw.headers, timeout=30) as c:  # one to remove, not replay
            r = c.post("/v1/events", json={"specversion": "1.0", "id": "e-3", "source": "/cli", "type": "com.example.order",
                                           "shop": "bonn", "data": {"flag": str(flag)}},
                       headers={"content-type": "application/cloudevents+json"})  # fmt: skip
            [unwanted] = r.json()["events"][0]["invocations"]
        while len(json.loads(cli("events", "dlq", "ls", "--json"))["dead_letters"]) < 2:
            assert time.monotonic() < deadline + 10, "no second dead letter"
            time.sleep(0.05)
        assert json.loads(cli("events", "dlq", "rm", unwanted, "--json")) == {"removed": [unwanted]}
        again = runner.invoke(app, ["events", "dlq", "rm", unwanted], env=env)
        assert again.exit_code == 4 and f"no dead letter '{unwanted}'" in again.stderr, again.output
        assert [d["id"] for d in json.loads(cli("events", "dlq", "ls", "--json"))["dead_letters"]] == [inv]

        flag.write_text("")
        replayed = json.loads(cli("events", "dlq", "replay", "--all", "--json"))["replayed"]
        assert [r["dead_letter"] for r in replayed] == [inv]
        with httpx.Client(base_url=gw.url, headers=gw.headers, timeout=30) as c:
            deadline = time.monotonic() + 10
            while (view := c.get(f"/v1/invocations/{replayed[0]['invocation']}").json())["status"] != "succeeded":
                assert time.monotonic() < deadline, view
                time.sleep(0.05)
        assert view["result"] == {"ok": "e-2", "shop": "berlin"}  # the function saw the extension
        assert json.loads(cli("events", "dlq", "ls", "--json"))["dead_letters"] == []
        nothing = runner.invoke(app, ["events", "dlq", "replay", "--all"], env=env)
        assert nothing.exit_code == 0 and "no dead letters to replay" in nothing.output, nothing.output  # not "replayed 0"
        cli("triggers", "rm", added["id"])
        assert added["id"] not in cli("triggers", "ls", "--json")
    finally:
        gw.stop()
