"""Where the SDK and the CLI find the gateway: arguments, env, then the user config.

``spanfaas up`` writes ``$XDG_CONFIG_HOME/spanfaas/config.toml`` (default
``~/.config/spanfaas/config.toml``) on its first start::

    url = "http://127.0.0.1:8080"
    token = "…"

A token saved there for another gateway is kept beside it first, in
``config-HOST-PORT.toml`` (``keep_replaced``): that gateway's admin token is
shown only once.

Resolution, first match wins: explicit arguments (``--url``, ``--token``),
``SPANFAAS_URL`` / ``SPANFAAS_TOKEN``, the config file, then the kept file of
the URL in use (so ``--url`` of a gateway whose config was kept finds its
token).  A saved token is only sent to the URL it was saved for, so pointing
the CLI at another gateway never leaks it.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

import msgspec

from spanfaas.errors import InvalidRequest, Unauthorized

__all__ = [
    "DEFAULT_URL",
    "UserConfig",
    "config_path",
    "keep_replaced",
    "kept_path",
    "kept_token",
    "kept_urls",
    "load_user_config",
    "resolve",
    "save_user_config",
    "withheld_token_url",
]

DEFAULT_URL = "http://127.0.0.1:8080"


class UserConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The user's saved connection: one gateway and its token."""

    url: str = ""
    token: str = ""


def config_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "spanfaas" / "config.toml"


def load_user_config(path: Path | None = None) -> UserConfig:
    """Read the user config; a missing file is an empty config."""
    path = path or config_path()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return UserConfig()
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InvalidRequest(f"cannot read {path}: {exc}; fix or delete the file") from None
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"cannot read {path}: it is not UTF-8 text ({exc.reason} at byte {exc.start}); fix or delete the file") from None
    try:
        return msgspec.convert(data, UserConfig)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"{path}: {exc}; fix or delete the file") from None


def save_user_config(config: UserConfig, path: Path | None = None) -> Path:
    """Write the user config, readable by the user only (it holds a token)."""
    path = path or config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    # JSON strings are valid TOML basic strings (same escapes).
    text = "".join(
        f"{field} = {json.dumps(value)}\n"
        for field, value in (("url", config.url), ("token", config.token))
        if value
    )
    tmp = path.with_suffix(".toml.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def keep_replaced(new: UserConfig, path: Path | None = None) -> Path | None:
    """Keep the saved config beside it before ``new`` (a new gateway's admin token, which
    ``spanfaas up`` saves) replaces it, when it holds another token: that gateway's admin
    token is shown once, and would be lost with it.  The copy is named for its URL
    (``config-127.0.0.1-8080.toml``); returns its path, or None when nothing was kept."""
    path = path or config_path()
    try:
        old = load_user_config(path)
    except InvalidRequest:
        return None  # (unreadable: nothing to keep)
    if not old.token or old.token == new.token:
        return None
    return save_user_config(old, kept_path(old.url or DEFAULT_URL, path))


def kept_path(url: str, path: Path | None = None) -> Path:
    """Where ``keep_replaced`` keeps the config of the gateway at ``url``: beside the
    config file, named for its host and port (``config-127.0.0.1-8080.toml``)."""
    path = path or config_path()
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        port = 0
    return path.with_name(f"config-{parts.hostname or 'unknown'}-{port}.toml")


def kept_token(url: str, path: Path | None = None) -> str | None:
    """The token kept for ``url`` (``keep_replaced``), if its kept file holds one saved with that URL."""
    kept = kept_path(url, path)
    try:
        config = load_user_config(kept)
    except InvalidRequest:
        return None  # (unreadable: as if none were kept; the config file itself is the one that must read)
    return config.token if config.token and _same_url(url, config.url or DEFAULT_URL) else None


def kept_urls(env: Mapping[str, str] | None = None) -> list[str]:
    """The URLs of the gateways whose tokens ``keep_replaced`` kept: where else the user
    may mean, when the gateway in use does not answer (a second ``spanfaas up``, since
    stopped, saved its URL over the first one's, which runs on)."""
    path = config_path(os.environ if env is None else env)
    urls = set()
    for kept in path.parent.glob("config-*.toml"):
        try:
            config = load_user_config(kept)
        except InvalidRequest:
            continue  # (unreadable: no gateway to name)
        if config.token and config.url:
            urls.add(config.url.rstrip("/"))
    return sorted(urls)


def _same_url(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


def resolve(
    url: str | None = None,
    token: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    config: UserConfig | None = None,
) -> tuple[str, str | None]:
    """The gateway URL and token to use: arguments > env > user config > the config kept for the URL."""
    env = os.environ if env is None else env
    url = url or env.get("SPANFAAS_URL") or None
    # A token never holds whitespace: one pasted with a space, or read from a file with its newline, is meant as it reads.
    token = (token or env.get("SPANFAAS_TOKEN") or "").strip() or None
    if url is None or token is None:
        path = config_path(env)
        config = config if config is not None else load_user_config(path)
        if url is None:
            url = config.url or DEFAULT_URL
        if token is None and config.token and _same_url(url, config.url or DEFAULT_URL):
            token = config.token
        elif token is None:
            token = kept_token(url, path)
    _check_url(url)
    if token is not None:
        _check_token(token)
    return url.rstrip("/"), token


def _check_token(token: str) -> None:
    """Tokens are printable ASCII; any other character cannot go into a header (httpx's
    UnicodeEncodeError traceback, or "the connection failed: Illegal header value", exit 7)."""
    for i, c in enumerate(token):
        if not " " < c < "\x7f":
            raise Unauthorized(
                f"the API token has a character no token has ({c!r}, at position {i + 1}); pass it as it was "
                "printed when it was made (--token, SPANFAAS_TOKEN)"
            )


_URL_HINT = "pass e.g. --url http://127.0.0.1:8080 (or set SPANFAAS_URL, or let `spanfaas up` save it)"


def _check_url(url: str) -> None:
    """A gateway URL the client can use, or an ``InvalidRequest`` that says what is wrong with it
    (a port that is no number went on as an httpx traceback; one out of range, a query or a
    fragment as a request that failed)."""
    try:
        parts = urlsplit(url)
        parts.port  # parsed on access: "Port out of range 0-65535", "could not be cast to integer"
    except ValueError as exc:
        raise InvalidRequest(f"the gateway URL {url!r} is not a valid URL ({exc}); {_URL_HINT}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(f"the gateway URL {url!r} is not an http(s) URL; {_URL_HINT}")
    if any(c.isspace() for c in url):
        raise InvalidRequest(f"the gateway URL {url!r} has a space in it; {_URL_HINT}")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise InvalidRequest(f"the gateway URL {url!r} has a query or a fragment; give the gateway's own URL: {_URL_HINT}")


def withheld_token_url(url: str, *, env: Mapping[str, str] | None = None) -> str | None:
    """The URL the saved token is for, when it was not sent because ``url`` is another one."""
    env = os.environ if env is None else env
    config = load_user_config(config_path(env))
    saved = (config.url or DEFAULT_URL).rstrip("/")
    return saved if config.token and not _same_url(url, saved) else None
