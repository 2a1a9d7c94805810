"""The image tables on real SQLite and real PostgreSQL: curated lists with their
audit trail (who, when, what), the policy, image records and who uses them."""

from __future__ import annotations

import time

import pytest

from spanfaas.errors import Conflict, NotFound
from spanfaas.images.curation import approved_package, new_list
from spanfaas.model import FunctionSpec, ImageRequest
from spanfaas.store import Store
from spanfaas.store.images import Actor, ImagePolicy, ImageRecord, LockedPackage

ALICE = Actor("alice", "tok_a")
BOB = Actor("bob", "tok_b")


@pytest.fixture
def store(any_store: Store) -> Store:
    return any_store


def image(id: str, size: int = 100) -> ImageRecord:
    now = time.time()
    return ImageRecord(
        id=id, python="3.11", lock="x==1\n", packages=[LockedPackage(name="x", version="1", direct=True)],
        request=ImageRequest(packages=["x"], lists=["l"]), size=size, built_by="alice", build_seconds=0.1,
        created_at=now, last_used_at=now,
    )  # fmt: skip


def test_list_changes_are_stored_and_each_is_audited_with_who_when_what(store: Store) -> None:
    before = time.time()
    store.create_image_list(new_list("science", note="numerics", packages=["numpy>=1.26,<3"], by="alice"), ALICE)
    with pytest.raises(Conflict, match="exists already"):
        store.create_image_list(new_list("science"), ALICE)
    assert store.put_approved_package("science", approved_package("pillow==11.*", by="bob"), BOB) is None
    previous = store.put_approved_package("science", approved_package("pillow>=11,<13", by="bob"), BOB)
    assert previous is not None and previous.specifier == "==11.*"
    store.update_image_list("science", ALICE, owner="data-team")
    removed = store.remove_approved_package("science", "numpy", BOB)
    assert removed.specifier == ">=1.26,<3"
    store.create_image_list(new_list("web"), ALICE)
    lst = store.get_image_list("science")
    assert lst is not None and lst.owner == "data-team" and lst.note == "numerics"
    assert [(p.name, p.specifier, p.added_by) for p in lst.packages] == [("pillow", ">=11,<13", "bob")]
    assert [x.name for x in store.list_image_lists()] == ["science", "web"]

    trail = store.image_audit("science")
    assert [(e.action, e.target, e.actor, e.actor_id) for e in trail] == [
        ("package.remove", "science/numpy", "bob", "tok_b"),
        ("list.update", "science", "alice", "tok_a"),
        ("package.update", "science/pillow", "bob", "tok_b"),
        ("package.add", "science/pillow", "bob", "tok_b"),
        ("list.create", "science", "alice", "tok_a"),
    ]
    assert all(before <= e.at <= time.time() for e in trail)
    assert trail[0].detail == {"specifier": ">=1.26,<3"}
    assert trail[1].detail == {"owner": {"from": "", "to": "data-team"}}
    assert trail[2].detail["from"] == "==11.*" and trail[2].detail["to"] == ">=11,<13"
    assert trail[4].detail["packages"] == ["numpy>=1.26,<3"]
    assert len(store.image_audit()) == 6 and len(store.image_audit(limit=2)) == 2

    deleted = store.delete_image_list("science", ALICE)
    assert [p.name for p in deleted.packages] == ["pillow"]
    assert store.get_image_list("science") is None
    assert store.image_audit("science")[0].detail == {"packages": ["pillow>=11,<13"]}


def test_an_update_that_changes_nothing_leaves_no_audit_entry(store: Store) -> None:
    """`curate update science` (or the same note again) was written to the audit trail as a
    'list.update' with an empty WHAT, and moved the list's updated time."""
    store.create_image_list(new_list("science", note="numerics", by="alice"), ALICE)
    before = store.get_image_list("science")
    for change in ({}, {"note": "numerics"}, {"note": "numerics", "owner": ""}):
        after = store.update_image_list("science", BOB, **change)
        assert after == before
    assert [e.action for e in store.image_audit("science")] == ["list.create"]


def test_missing_lists_and_packages_are_named(store: Store) -> None:
    store.create_image_list(new_list("science", packages=["numpy"]), ALICE)
    with pytest.raises(NotFound, match="curated list 'nope' not found; lists: science"):
        store.put_approved_package("nope", approved_package("x"), ALICE)
    with pytest.raises(NotFound, match="package 'scipy' is not on curated list 'science'; it approves: numpy"):
        store.remove_approved_package("science", "scipy", ALICE)
    with pytest.raises(NotFound):
        store.delete_image_list("nope", ALICE)
    assert len(store.image_audit()) == 1  # failed changes leave no trace


def test_policy_is_stored_and_audited(store: Store) -> None:
    assert store.get_image_policy() == ImagePolicy()
    store.set_image_policy(ImagePolicy(require_transitive=True), BOB)
    assert store.get_image_policy().require_transitive
    (entry,) = store.image_audit("policy")
    assert entry.actor == "bob" and entry.detail == {"from": {"require_transitive": False}, "to": {"require_transitive": True}}


def test_an_image_is_in_use_while_a_functions_latest_version_runs_on_it(store: Store) -> None:
    a, b = "a" * 64, "b" * 64
    assert store.put_image(image(a)) and not store.put_image(image(a))
    assert store.put_image(image(b))
    store.set_image_use("fn", "digest-1", a)
    assert store.image_users() == {}  # recorded before the version is stored: not in use yet
    store.put_function("fn", "digest-1", FunctionSpec(name="fn"))
    assert store.image_users() == {a: ["fn"]}
    assert store.image_for("fn", "digest-1") == a
    with pytest.raises(Conflict, match="in use by fn"):
        store.delete_image(a, ALICE)
    store.set_image_use("fn", "digest-2", b)
    store.put_function("fn", "digest-2", FunctionSpec(name="fn"))  # a new version on image b
    assert store.image_users() == {b: ["fn"]}
    assert store.delete_image(a, ALICE)
    assert not store.delete_image(a, ALICE)
    # a build request is no use, the first deploy is the first, the next a reuse
    assert [store.touch_image(b, time.time(), deploy=d) for d in (False, True, False, True)] == [False, False, False, True]
    got = store.get_image(b)
    assert got is not None and got.reuses == 1 and got.packages[0].name == "x"
    store.delete_function("fn")
    assert store.image_users() == {}
    assert store.delete_image(b, ALICE)
    assert [e.action for e in store.image_audit(a)] == ["image.remove"]


def test_records_of_bundles_never_stored_are_pruned_after_a_while(store: Store) -> None:
    store.set_image_use("fn", "stored", "a" * 64)
    store.put_function("fn", "stored", FunctionSpec(name="fn"))
    store.set_image_use("fn", "failed-deploy", "a" * 64)
    assert store.prune_image_uses(time.time() - 3600) == 0  # recent: a deploy may be storing it right now
    assert store.prune_image_uses(time.time() + 1) == 1
    assert store.image_for("fn", "stored") == "a" * 64 and store.image_for("fn", "failed-deploy") is None


def test_the_audit_of_a_target_is_that_target_not_a_pattern(store: Store) -> None:
    """The target went into a LIKE pattern as it was: 'audit?target=%' listed every
    package change, and 't_ny' those of list tiny."""
    store.create_image_list(new_list("tiny", packages=["six"]), ALICE)
    store.put_approved_package("tiny", approved_package("idna"), ALICE)
    assert [e.target for e in store.image_audit("tiny")] == ["tiny/idna", "tiny"]
    for pattern in ("%", "t_ny", "ti%", "_", "tiny%"):
        assert store.image_audit(pattern) == [], pattern
