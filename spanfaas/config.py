"""Platform settings: a typed record from ``config.toml`` plus ``SPANFAAS_*`` env.

Nothing happens at import time; ``Settings.load()`` reads, validates and
returns a frozen record.  Unknown keys and bad env values fail loudly.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

from spanfaas.errors import InvalidRequest

__all__ = ["RuntimeSettings", "Settings", "default_data_dir"]

MiB = 1024 * 1024


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(base) / "spanfaas"


class RuntimeSettings(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The local runtime's knobs."""

    sandbox: bool = True
    """Apply the sandbox (namespaces, cgroups, Landlock, seccomp) where the host allows."""
    uid_base: Annotated[int, Meta(ge=1000)] = 200_000
    """Functions run as uid_base + n (root only; otherwise as the current user)."""
    cgroup_root: str = "spanfaas"
    """Name of the cgroup directory spanfaas creates under each controller."""
    max_payload: Annotated[int, Meta(ge=1024)] = 32 * MiB
    preimport: list[str] = msgspec.field(default_factory=lambda: ["json", "asyncio", "logging", "random", "datetime", "decimal", "base64", "hashlib", "uuid", "re", "collections", "dataclasses", "typing"])


class Settings(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    data_dir: str = ""
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 8080
    store: str = ""
    """'' for SQLite under data_dir, or a postgresql:// URL."""
    max_payload: Annotated[int, Meta(ge=1024)] = 32 * MiB
    max_bundle: Annotated[int, Meta(ge=1024)] = 64 * MiB
    async_retries: Annotated[int, Meta(ge=0, le=100)] = 3
    async_backoff: Annotated[float, Meta(ge=0)] = 0.5
    async_workers: Annotated[int, Meta(ge=1, le=1024)] = 16
    runtime: RuntimeSettings = RuntimeSettings()

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir) if self.data_dir else default_data_dir()

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> Settings:
        """Read settings: file (if any) < ``SPANFAAS_*`` env < explicit overrides."""
        env = os.environ if env is None else env
        data: dict[str, Any] = {}
        path = path or env.get("SPANFAAS_CONFIG")
        if path:
            p = Path(path)
            try:
                data = tomllib.loads(p.read_text())
            except FileNotFoundError:
                raise InvalidRequest(f"config file {p} does not exist") from None
            except tomllib.TOMLDecodeError as exc:
                raise InvalidRequest(f"config file {p} is not valid TOML: {exc}") from None
        fields = {f.name: f for f in msgspec.structs.fields(cls)}
        for key, raw in env.items():
            if not key.startswith("SPANFAAS_") or key == "SPANFAAS_CONFIG":
                continue
            name = key.removeprefix("SPANFAAS_").lower()
            if name not in fields or name == "runtime":
                continue  # other tools' variables (SPANFAAS_URL, SPANFAAS_TOKEN) live here too
            data[name] = _coerce(key, raw, fields[name].type)
        data.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return msgspec.convert(data, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise InvalidRequest(f"invalid settings: {exc}") from None


def _coerce(key: str, raw: str, typ: Any) -> Any:
    try:
        if typ is int or "int" in str(typ):
            return int(raw)
        if typ is float or "float" in str(typ):
            return float(raw)
    except ValueError:
        raise InvalidRequest(f"environment variable {key}={raw!r} must be a number") from None
    return raw
