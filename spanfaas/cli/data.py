"""What ``-d`` / ``--data`` takes, for ``invoke`` and ``events send`` alike.

``-d JSON``, ``-d @FILE`` or ``-d @-`` (stdin): a JSON value, or the raw
bytes of a file (or stdin) that is not JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from spanfaas.errors import InvalidPayload

__all__ = ["read_data"]


def read_data(data: str | None) -> tuple[Any, bytes | None]:
    """-d JSON, -d @FILE or -d @- (stdin): a JSON value, or raw bytes if the file is not JSON."""
    if data is None:
        return None, None
    if data.startswith("@"):
        source = data[1:]
        if not source:  # (Path("") is the current directory)
            raise InvalidPayload("-d @ names no file; send a file with -d @FILE, or -d @- for stdin")
        try:
            raw = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
        except OSError as exc:
            raise InvalidPayload(f"cannot read -d {data}: {exc.strerror or exc}") from None
        try:
            return json.loads(raw), None
        except (ValueError, UnicodeDecodeError):
            return None, raw
        except RecursionError:
            raise InvalidPayload(f"-d {data} is JSON nested too deeply to decode; flatten it") from None
    try:
        return json.loads(data), None
    except ValueError as exc:
        raise InvalidPayload(
            f"-d is not valid JSON ({exc}); quote it like -d '{{\"name\": \"x\"}}', or send a file with -d @FILE"
        ) from None
    except RecursionError:
        raise InvalidPayload("-d is JSON nested too deeply to decode; flatten it") from None
