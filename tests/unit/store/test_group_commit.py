"""Group commit: callers share one transaction per batch, and always hear how it ended."""

from __future__ import annotations

import asyncio
import threading

import pytest

from spanfaas.errors import InfraUnavailable
from spanfaas.store import RecordRefused
from spanfaas.store.group_commit import GroupCommit

pytestmark = pytest.mark.asyncio


class _Commits:
    """A commit that records its batches; it can block until released, or fail."""

    def __init__(self, block: bool = False, fail: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        if not block:
            self.release.set()
        self.fail = fail

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(items)
        self.entered.set()
        self.release.wait(10)
        if self.fail:
            raise OSError("disk full")
        return [x * 10 for x in items]


async def test_callers_that_gathered_share_a_transaction_and_get_their_own_results() -> None:
    commits = _Commits(block=True)
    group: GroupCommit[int, int] = GroupCommit(commits, max_batch=3, name="t", stopped="stopped")
    first = asyncio.create_task(group.submit([1]))
    await asyncio.to_thread(commits.entered.wait, 5)
    rest = [asyncio.create_task(group.submit(items)) for items in ([2, 3], [4], [5])]  # gather meanwhile
    await asyncio.sleep(0)
    commits.release.set()
    assert await first == [10]
    assert [await r for r in rest] == [[20, 30], [40], [50]]
    assert commits.batches == [[1], [2, 3, 4], [5]]  # at most max_batch items, callers kept whole
    assert await group.submit([]) == []


async def test_a_failed_commit_fails_its_callers_and_the_next_batch_goes_on() -> None:
    commits = _Commits(fail=True)
    group: GroupCommit[int, int] = GroupCommit(commits, max_batch=10, name="t", stopped="stopped")
    with pytest.raises(OSError, match="disk full"):
        await group.submit([1])
    commits.fail = False
    assert await group.submit([2]) == [20]


@pytest.mark.parametrize("fail", [False, True], ids=["committed", "failed"])
async def test_a_stopped_committer_tells_each_caller_what_is_true(fail: bool) -> None:
    """The gateway stops mid-batch: nobody waits for ever, and nobody is told what is not so.
    Every caller heard "not queued; send it again", those whose transaction the store was
    committing too: it did commit, and a retry queued a second invocation."""
    commits = _Commits(block=True, fail=fail)
    group: GroupCommit[int, int] = GroupCommit(commits, max_batch=10, name="t", stopped="not sent; send it again")
    first = asyncio.create_task(group.submit([1]))
    await asyncio.to_thread(commits.entered.wait, 5)
    second = asyncio.create_task(group.submit([2]))  # queued behind
    await asyncio.sleep(0)
    assert group._task is not None
    group._task.cancel()
    async with asyncio.timeout(5):
        with pytest.raises(InfraUnavailable, match="not sent; send it again"):
            await second  # never sent: told so at once
        assert not first.done()  # in the store's hands: it waits for how that ends
        commits.release.set()
        if fail:
            with pytest.raises(OSError, match="disk full"):
                await first
        else:
            assert await first == [10]
    assert commits.batches == [[1]]


class _Refusing(_Commits):
    """A store that refuses any batch holding a negative item, as a whole (one transaction)."""

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(items)
        bad = [x for x in items if x < 0]
        if bad:
            raise RecordRefused(f"the store refused {bad[0] if len(items) == 1 else f'one of {len(items)} items'}")
        return [x * 10 for x in items]


async def test_a_caller_whose_items_the_store_refuses_fails_alone() -> None:
    """One refused value failed every caller of its batch: a record the store can never
    take failed the invocations that happened to be queued in the same transaction."""
    commits = _Refusing()
    group: GroupCommit[int, int] = GroupCommit(commits, max_batch=100, name="t", stopped="stopped")
    outcomes = await asyncio.gather(*(group.submit(items) for items in ([1], [2, 3], [-4], [5], [6])), return_exceptions=True)
    assert outcomes[:2] == [[10], [20, 30]] and outcomes[3:] == [[50], [60]], outcomes
    assert isinstance(outcomes[2], RecordRefused) and str(outcomes[2]) == "the store refused -4", outcomes[2]
    assert commits.batches[0] == [1, 2, 3, -4, 5, 6]  # one transaction first; halved only when refused
    assert len(commits.batches) <= 1 + 2 * 3, commits.batches  # a few transactions per refused caller
