"""Where a gateway waits.

``kill -USR1 <gateway pid>``: every thread's stack and every asyncio task's
stack, written to the gateway's log.

For a gateway that seems stuck (a stop that does not end, a request that never
answers): the dump says where each thread and each task waits.  The handler runs
on the event loop, so a loop blocked in a call shows as the main thread's stack
the next time it wakes; threads blocked in the default executor (store calls)
show at once.  A stop step that takes long is logged by :func:`slow_step`.
"""

from __future__ import annotations

import asyncio
import io
import logging
import signal
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

__all__ = ["dump_stacks", "install_stack_dump", "slow_step"]

log = logging.getLogger("spanfaas.gateway")


def dump_stacks(loop: asyncio.AbstractEventLoop | None = None) -> str:
    """Every thread's stack, then every task's (the loop's, if given)."""
    out = io.StringIO()
    names = {t.ident: t.name for t in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        out.write(f"--- thread {names.get(ident, ident)}\n")
        out.write("".join(traceback.format_stack(frame)))
    if loop is not None:
        for task in asyncio.all_tasks(loop):
            out.write(f"--- task {task.get_name()} {task.get_coro()!r}\n")
            task.print_stack(file=out)
    return out.getvalue()


def install_stack_dump(loop: asyncio.AbstractEventLoop) -> None:
    """SIGUSR1 logs :func:`dump_stacks`; outside the main thread (tests), nothing."""
    if threading.current_thread() is not threading.main_thread():
        return
    loop.add_signal_handler(signal.SIGUSR1, lambda: log.warning("stacks (SIGUSR1):\n%s", dump_stacks(loop)))


@asynccontextmanager
async def slow_step(what: str, slow: float = 2.0) -> AsyncIterator[None]:
    """Logs a stop step that takes over ``slow`` seconds: the log then says where
    a stop that seems stuck spends its time."""
    start = time.monotonic()
    try:
        yield
    finally:
        if (took := time.monotonic() - start) > slow:
            log.warning("stopping: %s took %.1f s", what, took)
