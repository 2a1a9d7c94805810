"""The ``context`` argument a handler receives: explicit, never ``os.environ``."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

__all__ = ["Context", "function_logger"]


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is now (the invocation's capture)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


_handler = _StderrHandler()


def _new_logger(name: str) -> logging.Logger:
    logger = logging.Logger(name, logging.INFO)
    logger.parent = logging.root
    logger.propagate = False
    logger.addHandler(_handler)
    return logger


# The loggers handed to handlers, one per function in a process.  Made here
# rather than by ``logging.getLogger``: registering a logger walks and
# clears logging's whole hierarchy, which in a freshly forked template
# un-shares ~200-400 KiB of the zygote's pages.  One is made at import (in
# the zygote) and given its function's name by the first template to ask.
_loggers: dict[str, logging.Logger] = {}
_unnamed: list[logging.Logger] = [_new_logger("spanfaas.function")]


def function_logger(function_name: str) -> logging.Logger:
    """The logger of ``function_name``'s invocations in this process."""
    logger = _loggers.get(function_name)
    if logger is None:
        name = f"spanfaas.function.{function_name}"
        if _unnamed:
            logger = _unnamed.pop()
            logger.name = name
        else:
            logger = _new_logger(name)
        _loggers[function_name] = logger
    return logger


class Context:
    """What a handler knows about its invocation.

    ``deadline`` is wall-clock seconds (``time.time()``); ``remaining_time()``
    tells how long is left.  ``event`` carries CloudEvent attributes when an
    event triggered the call.  ``logger`` writes into the invocation's logs.
    """

    __slots__ = ("invocation_id", "function_name", "deadline", "event", "logger")

    def __init__(
        self,
        invocation_id: str,
        function_name: str,
        deadline: float,
        event: dict[str, Any] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.invocation_id = invocation_id
        self.function_name = function_name
        self.deadline = deadline
        self.event = event
        # ``logger``: ``function_logger(function_name)``, looked up once by its caller (each
        # call here would be a function and its code touched again in a fresh instance).
        self.logger = logger if logger is not None else function_logger(function_name)

    def remaining_time(self) -> float:
        """Seconds left before the platform stops this invocation."""
        return max(0.0, self.deadline - time.time())

    def __repr__(self) -> str:
        return f"Context(invocation_id={self.invocation_id!r}, function_name={self.function_name!r}, remaining={self.remaining_time():.3f}s)"
