"""Where a gateway waits: stack dumps and slow stop steps (spanfaas.gateway.stacks)."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from spanfaas.gateway.stacks import dump_stacks, slow_step


async def test_the_dump_names_each_thread_and_each_task_where_it_waits() -> None:
    release = threading.Event()

    def blocked_in_a_thread() -> None:
        release.wait(10)

    async def waiting_task() -> None:
        await asyncio.sleep(10)

    thread = threading.Thread(target=blocked_in_a_thread, name="store-call")
    thread.start()
    task = asyncio.create_task(waiting_task(), name="the-waiter")
    await asyncio.sleep(0)
    try:
        text = dump_stacks(asyncio.get_running_loop())
    finally:
        release.set()
        task.cancel()
        thread.join()
    assert "--- thread store-call" in text and "blocked_in_a_thread" in text
    assert "--- task the-waiter" in text and "waiting_task" in text


async def test_a_slow_stop_step_is_logged_and_a_quick_one_is_not(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="spanfaas.gateway"):
        async with slow_step("quick", slow=0.5):
            pass
        async with slow_step("the dispatcher", slow=0.05):
            await asyncio.sleep(0.1)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and messages[0].startswith("stopping: the dispatcher took "), messages
