"""Text too long to keep whole: its head and its tail, with a marker between them.

A call's logs and a function's error end where it failed (the error, the most
recent frame), and start where it began: past a budget, both ends are kept and
the middle goes, the marker saying how much of it did.  The runtime keeps a
call's stored logs so (the first 256 KiB, the last 768 KiB, read from its log
memfd); ``keep_ends`` does it for a ``str`` within any measure of its size (its
characters, or its bytes as a JSON header value), with the same share: a
quarter head, three quarters tail.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["keep_ends"]

HEAD_SHARE = 4
"""One ``HEAD_SHARE``-th of what is kept is the head, the rest the tail (as stored logs)."""


def keep_ends(text: str, budget: int, marker: Callable[[int], str], size: Callable[[str], int] = len) -> str:
    """``text`` if its ``size`` is at most ``budget``; else its first and last characters
    around ``marker(n)`` (``n``: the characters left out), as many as keep the whole within
    ``budget`` -- a quarter of them from the head.  Nothing of ``text`` when even the marker
    alone is over ``budget`` (then only the marker is returned).  ``size`` counts one at
    least for each character (so no more than ``budget`` characters are ever tried)."""
    if size(text) <= budget:
        return text
    keep = min(len(text) - 1, budget)
    while True:
        head = keep // HEAD_SHARE
        tail = keep - head
        out = text[:head] + marker(len(text) - keep) + (text[-tail:] if tail else "")
        over = size(out)
        if over <= budget or keep == 0:
            return out
        keep = max(0, min(keep - 1, keep * budget // over))
