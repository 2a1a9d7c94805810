"""The ``context`` argument a handler receives: explicit, never ``os.environ``."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

__all__ = ["Context"]


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
# One logger per function, made once (in the template): a fresh instance then
# skips logging.getLogger's lock and manager lookup (copy-on-write faults).
_loggers: dict[str, logging.Logger] = {}


def _function_logger(function_name: str) -> logging.Logger:
    logger = logging.getLogger(f"spanfaas.function.{function_name}")
    if _handler not in logger.handlers:
        logger.addHandler(_handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
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
    ) -> None:
        self.invocation_id = invocation_id
        self.function_name = function_name
        self.deadline = deadline
        self.event = event
        logger = _loggers.get(function_name)
        if logger is None:
            logger = _loggers[function_name] = _function_logger(function_name)
        self.logger = logger

    def remaining_time(self) -> float:
        """Seconds left before the platform stops this invocation."""
        return max(0.0, self.deadline - time.time())

    def __repr__(self) -> str:
        return f"Context(invocation_id={self.invocation_id!r}, function_name={self.function_name!r}, remaining={self.remaining_time():.3f}s)"
