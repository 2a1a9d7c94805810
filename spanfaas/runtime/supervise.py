"""The loop of a supervising child process (the zygote, a template).

Single-threaded: it waits for control messages from the runtime and for
SIGCHLD (through a wake-up pipe, so a signal never interrupts the work in
progress), and returns when the runtime's channel closes.
"""

from __future__ import annotations

import os
import select
import signal
import socket
from collections.abc import Callable
from typing import Any

import msgspec

from spanfaas.runtime import protocol as p


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
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
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
