"""The loop of a supervising child process (the zygote, a template).

Single-threaded: it waits for control messages from the runtime and for
SIGCHLD (through a wake-up pipe, so a signal never interrupts the work in
progress), and returns when the runtime's channel closes.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # no stubs: the C half of signal
import os
import select
import signal
import socket
from collections.abc import Callable
from typing import Any

import msgspec

from spanfaas.runtime import protocol as p


SIGCHLD = int(signal.SIGCHLD)


def _ignore(signum: int, frame: object) -> None:
    pass  # the wake-up fd does the work


def supervise(
    chan: socket.socket,
    decoder: msgspec.msgpack.Decoder[Any],
    wake: tuple[int, int],
    on_message: Callable[[Any, list[int]], bool],
    on_children: Callable[[], None],
) -> None:
    """Run until EOF on ``chan`` or until ``on_message`` returns True.

    ``wake`` is a non-blocking pipe (read end, write end) for SIGCHLD;
    ``on_children`` reaps after one arrived.
    """
    wake_r, wake_w = wake
    # The C functions: signal.signal's enum conversions would un-share ~70 KiB
    # in every template (see runtime/forking.py).
    _signal.set_wakeup_fd(wake_w)
    _signal.signal(SIGCHLD, _ignore)
    poller = select.poll()
    poller.register(chan.fileno(), select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    while True:
        for fd, _ in poller.poll():
            if fd == wake_r:
                try:
                    os.read(wake_r, 4096)
                except BlockingIOError:
                    pass
                on_children()
                continue
            try:
                got = p.recv_msg(chan, decoder)
            except ConnectionError:  # the runtime went away mid-message
                got = None
            if got is None or on_message(*got):
                return
