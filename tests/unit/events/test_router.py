"""Trigger matching: globs on source, type, subject and any attribute."""

from __future__ import annotations

import time

from spanfaas.events.router import TriggerTable, manifest_triggers
from spanfaas.model import FunctionRecord, FunctionSpec, Trigger, TriggerRecord


def rec(function: str, id: str, **kw: object) -> TriggerRecord:
    return TriggerRecord(id=id, function=function, trigger=Trigger(**kw))  # type: ignore[arg-type]


ATTRS = {"specversion": "1.0", "id": "1", "source": "s3://photos", "type": "com.amazonaws.s3.ObjectCreated:Put",
         "subject": "uploads/cat.jpg", "shop": "berlin"}  # fmt: skip


def test_globs() -> None:
    table = TriggerTable([
        rec("thumb", "a", source="s3://photos", type="com.amazonaws.s3.ObjectCreated:*", subject="uploads/*.jpg"),
        rec("audit", "b"),  # everything
        rec("png", "c", subject="*.png"),
        rec("shops", "d", filters={"shop": "b*"}),
        rec("paris", "e", filters={"shop": "paris"}),
        rec("region", "f", filters={"region": "*"}),  # the attribute must exist
        rec("tick", "g", schedule="* * * * *"),  # schedules get their own ticks only
    ])  # fmt: skip
    assert sorted(r.function for r in table.match(ATTRS)) == ["audit", "shops", "thumb"]
    assert [r.id for r in table.schedules] == ["g"]


def test_one_invocation_per_function_and_case_sensitive() -> None:
    table = TriggerTable([rec("fn", "a", type="com.*"), rec("fn", "b", source="s3://*")])
    assert [r.id for r in table.match(ATTRS)] == ["a"]
    assert TriggerTable([rec("fn", "a", source="S3://*")]).match(ATTRS) == []


def test_manifest_trigger_ids() -> None:
    spec = FunctionSpec(name="fn", triggers=[Trigger(type="a"), Trigger(name="nightly", schedule="0 3 * * *")])
    fr = FunctionRecord(name="fn", version=1, digest="d", spec=spec, created_at=time.time())
    assert [t.id for t in manifest_triggers(fr)] == ["fn:0", "fn:nightly"]
    assert {t.origin for t in manifest_triggers(fr)} == {"manifest"}
