"""Platform settings: a typed record from ``config.toml`` plus ``SPANFAAS_*`` env.

Nothing happens at import time; ``Settings.load()`` reads, validates and
returns a frozen record.  Unknown keys and bad env values fail loudly.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from spanfaas import config_problems as said
from spanfaas.errors import InvalidRequest

__all__ = [
    "DnsSettings",
    "EventSettings",
    "ImageSettings",
    "InfraConfig",
    "RedisStreamConfig",
    "RuntimeSettings",
    "SchedulerSettings",
    "Settings",
    "WebhookConfig",
    "check_port",
    "default_data_dir",
]

MiB = 1024 * 1024


def check_port(port: int | None, flag: str) -> int | None:
    """A port given on the command line, refused naming the ``flag`` it came with
    (not the setting it becomes)."""
    if port is not None and not 0 <= port <= 65535:
        raise InvalidRequest(f"{flag} {port} is not a port; pass 1 to 65535, or 0 to pick a free one")
    return port


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
    spares: Annotated[int, Meta(ge=0, le=8)] = 1
    """Sandbox shells each zygote keeps forked ahead of deploys (namespaces
    unshared, cgroup joined): a sandboxed cold start skips that work.  0: none."""
    max_payload: Annotated[int, Meta(ge=1024)] = 32 * MiB
    prewarm_hold: Annotated[float, Meta(gt=0)] = 10.0
    """Seconds a prewarmed template is kept from scaling to zero while its call is awaited;
    a prewarm with no call by then counts as wasted."""
    predict: bool = True
    """Predictive warm-up: start a cold function's template shortly before its
    arrival histogram expects the next call."""
    predict_budget: Annotated[int, Meta(ge=0)] = 512
    """MiB that predictive warm-ups may hold at once (each: template + one instance at resources.memory)."""
    preimport: list[str] = msgspec.field(
        default_factory=lambda: ["json", "logging", "random", "datetime", "base64", "re", "collections", "dataclasses", "typing"]
    )
    """Modules the zygote imports for every function.  Each C extension adds
    memory mappings to every template, and fork cost grows with mappings, so
    heavy ones (asyncio with ssl, hashlib, decimal) are left to the functions
    that use them (or to an image's ``preload``)."""
    scratch_size: Annotated[int, Meta(ge=1)] = 1024
    """Without the sandbox: MiB of the tmpfs the runtime mounts for its instances' scratch
    dirs (root only; elsewhere they stay in the data dir).  A function that fills it gets
    ENOSPC ("No space left on device"); the host's memory does not fill."""


InfraName = Annotated[str, Meta(pattern=r"^[a-z][a-z0-9_-]{0,62}$")]


class InfraConfig(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One ``[[infrastructures]]`` entry: where it is, and what it declares.

    Declared capabilities left unset (``None``) are taken from the
    infrastructure itself (a Ray cluster's resources, a remote site's
    ``/v1/info``) or default to what the local machine offers.
    """

    name: InfraName
    kind: Literal["local", "ray", "remote"] = "local"
    address: str = ""
    """ray: a GCS address ``host:port`` or ``ray://host:port``; remote: the site's base URL."""
    token: str = ""
    """remote: the site's API token (``deploy`` and ``invoke`` scopes)."""
    region: str | None = None
    labels: dict[str, str] = {}
    gpu: bool | None = None
    max_memory: Annotated[int, Meta(ge=16)] | None = None
    """MiB one instance may use there."""
    max_timeout: Annotated[float, Meta(gt=0)] | None = None
    price_per_gb_s: Annotated[float, Meta(ge=0)] | None = None
    datasets: list[str] = []
    slots: Annotated[int, Meta(ge=1)] | None = None
    """Invocations it runs at once, for the ``load`` preference (default: what it reports)."""
    timeout: Annotated[float, Meta(gt=0)] = 10.0
    """ray/remote: seconds to connect or to deploy before the attempt counts as failed."""


class SchedulerSettings(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The spanning scheduler's knobs."""

    refresh_interval: Annotated[float, Meta(gt=0)] = 1.0
    """Seconds between background refreshes of each infrastructure's info."""
    failure_threshold: Annotated[int, Meta(ge=1)] = 3
    """Consecutive infrastructure failures that open its circuit breaker."""
    open_for: Annotated[float, Meta(gt=0)] = 1.0
    """Seconds an opened breaker stays open before one probe goes through (doubles per failed probe)."""
    max_open_for: Annotated[float, Meta(gt=0)] = 30.0
    ewma_alpha: Annotated[float, Meta(gt=0, le=1)] = 0.2
    explore_every: Annotated[int, Meta(ge=0)] = 50
    """latency or load preferred first: every Nth decision tries the runner-up, so its EWMA stays current (0: never)."""


SourceName = Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]


class WebhookConfig(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One ``[[events.webhooks]]`` hook: ``POST /hooks/<name>``, signed GitHub-style
    (``X-Hub-Signature-256: sha256=<HMAC-SHA256 of the body with the secret>``)."""

    name: SourceName
    secret: Annotated[str, Meta(min_length=8)]
    source: str = ""
    """The ``source`` of its CloudEvents (default ``webhook/<name>``)."""
    type_prefix: str = "com.github."
    """The events' ``type`` is this prefix + the event header (+ ``.<action>`` when the body has one)."""
    event_header: str = "X-GitHub-Event"
    id_header: str = "X-GitHub-Delivery"
    """The delivery id header: the events' ``id`` (de-duplicated); absent: the body's sha256."""


class RedisStreamConfig(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One ``[[events.redis]]`` source: a Redis stream read through a consumer group."""

    name: SourceName
    stream: Annotated[str, Meta(min_length=1)]
    url: str = "redis://127.0.0.1:6379/0"
    group: str = "spanfaas"
    consumer: str = ""
    """This gateway's name in the group (default: the host name); keep it stable across restarts."""
    start: Literal["new", "all"] = "new"
    """Where a new group starts: entries added from now on, or the whole stream.  A group the
    store knows a reader had, found missing (Redis restarted without its data), starts at the stream's start."""
    batch: Annotated[int, Meta(ge=1, le=10_000)] = 256
    block: Annotated[float, Meta(gt=0, le=60)] = 1.0
    """Seconds one read waits for new entries."""
    claim_idle: Annotated[float, Meta(gt=0)] = 60.0
    """Seconds after which entries another consumer left unacknowledged are taken over."""
    source: str = ""
    """The ``source`` of entries that are not CloudEvents themselves (default ``redis/<stream>``)."""
    type: str = "dev.spanfaas.redis.entry"

    def __post_init__(self) -> None:
        # Refused here, at start: the reader would otherwise retry a URL it can never use, for ever.
        if self.url.partition("://")[0].lower() not in ("redis", "rediss", "unix") or "://" not in self.url:
            raise ValueError(
                f"events.redis '{self.name}': url {self.url!r} is no Redis URL; write redis://host:6379/0 "
                "(rediss:// for TLS, unix:///path/to/redis.sock for a socket)"
            )


class EventSettings(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Event proxies and delivery (the ``[events]`` table)."""

    max_body: Annotated[int, Meta(ge=1024)] = 1 * MiB
    """Largest event request body (CloudEvents, webhooks, S3 notifications)."""
    dedup_window: Annotated[float, Meta(ge=0)] = 86400.0
    """Seconds during which a second event with the same (source, id) is dropped."""
    retries: Annotated[int, Meta(ge=0, le=100)] = 3
    """Failed deliveries retried before the event goes to the dead-letter store (a run
    started again because the gateway died during one is not a retry)."""
    backoff: Annotated[float, Meta(ge=0)] = 1.0
    """Seconds before the first retry; doubles per attempt."""
    max_backoff: Annotated[float, Meta(ge=0)] = 300.0
    catchup_limit: Annotated[int, Meta(ge=1, le=100_000)] = 100
    """Schedules with missed = "all": at most this many missed ticks fire after a pause."""
    webhooks: list[WebhookConfig] = []
    redis: list[RedisStreamConfig] = []

    def __post_init__(self) -> None:
        for kind, names in (("webhooks", [w.name for w in self.webhooks]), ("redis", [r.name for r in self.redis])):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"events.{kind} names must be unique; repeated: {', '.join(dupes)}")


class ImageSettings(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Image builds (the ``[images]`` table): where packages come from.

    Which packages may be used is decided at run time by admins (curated
    lists and the image policy, over the API); this table says where uv
    finds them.  ``offline = true`` with ``find_links`` builds from local
    wheelhouses only and never contacts an index.
    """

    index_url: str = ""
    """The package index to resolve against; empty: uv's default (PyPI)."""
    extra_index_urls: list[str] = []
    find_links: list[str] = []
    """Directories of wheels (wheelhouses) searched besides the index."""
    offline: bool = False
    """Resolve and install from ``find_links`` only (``--no-index --offline``)."""
    dir: str = ""
    """Where images live; empty: ``<data_dir>/images``.  Gateways may share one (see spanfaas/images/leases.py)."""
    uv: str = ""
    """The uv binary; empty: the one the ``uv`` package installed."""
    build_timeout: Annotated[float, Meta(gt=0)] = 900.0
    """Seconds one resolve or install may take before it is stopped."""
    http_retries: Annotated[int, Meta(ge=0, le=20)] = 3
    """Times uv retries a failed request to a package source before the build
    fails as unreachable (``UV_HTTP_RETRIES``)."""


class DnsSettings(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The DNS responder (the ``[dns]`` table): a lookup of ``<function>.<zone>``
    answers with the gateway's address and starts the function's template."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 5353
    """UDP port; 0 picks a free one."""
    zone: Annotated[str, Meta(pattern=r"^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.?$")] = "spanfaas.internal"
    address: str = ""
    """The address answered; empty: the gateway's host (127.0.0.1 when it listens on every address)."""
    ttl: Annotated[int, Meta(ge=0, le=86400)] = 0
    """Seconds resolvers may cache an answer; 0 lets every lookup reach the responder (and prewarm)."""


def _default_infrastructures() -> list[InfraConfig]:
    return [InfraConfig(name="local", kind="local")]


_NOT_SETTINGS = frozenset(
    {"SPANFAAS_CONFIG", "SPANFAAS_URL", "SPANFAAS_TOKEN", "SPANFAAS_TEST_STALL", "SPANFAAS_TEST_LANDLOCK_ABI"}
)
"""Variables of the prefix that are no setting: the config file's path, the CLI's and the
SDK's gateway and token, the event tests' stall hook (spanfaas.events.service), the sandbox
tests' lowered Landlock ABI (spanfaas.sandbox.landlock.TEST_ABI_ENV)."""

_TABLE_TYPES: dict[str, type[Struct]] = {
    "runtime": RuntimeSettings, "scheduler": SchedulerSettings, "events": EventSettings, "dns": DnsSettings, "images": ImageSettings,
}  # fmt: skip
_TABLES = tuple(_TABLE_TYPES)
"""Settings that are tables: set in the config file only."""


def _table_key(table: str, name: str) -> str:
    """Where a variable such as SPANFAAS_EVENTS_RETRIES (``name`` ``events_retries``) is set: in the
    config file, as the key of ``table`` it names or may mean (its value left out: it may be a secret)."""
    keys = [f.name for f in msgspec.structs.fields(_TABLE_TYPES[table])]
    close = difflib.get_close_matches(name.removeprefix(f"{table}_"), keys, n=1)
    if not close:
        return f"the [{table}] table has no variables; set its keys in the config file (SPANFAAS_CONFIG): {', '.join(keys)}"
    return (
        f"{table}.{close[0]} is a key of the [{table}] table, which no variable sets: "
        f"set it in the config file (SPANFAAS_CONFIG): [{table}] {close[0]} = ..."
    )


class Settings(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    data_dir: str = ""
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 8080
    store: str = ""
    """'' for SQLite under data_dir, or a postgresql:// URL."""
    max_payload: Annotated[int, Meta(ge=1024)] = 32 * MiB
    """Largest invocation payload the gateway accepts (413 above).  The local runtime's
    ``runtime.max_payload`` follows it when it is lower, so what is accepted can run."""
    max_bundle: Annotated[int, Meta(ge=1024)] = 64 * MiB
    stop_grace: Annotated[int, Meta(ge=0, le=3600)] = 10
    """Seconds a stop (SIGTERM, Ctrl-C) waits for the work in progress, counted from the
    signal: the sync requests (those still in progress then are cut short, answered 503,
    named in one warning of the log) and the async invocations running (those still running
    then go back to the queue, not counted; none is claimed after the signal)."""
    async_retries: Annotated[int, Meta(ge=0, le=100)] = 3
    """Async invocations: runs that failed on the platform (``InfraError``) retried.  A run
    started again because the gateway died during one is not a retry (``CRASH_RERUNS``),
    and an invocation its gateway died holding before it ran was no run (``CRASH_RECLAIMS``)."""
    async_backoff: Annotated[float, Meta(ge=0)] = 0.5
    async_workers: Annotated[int, Meta(ge=1, le=1024)] = 16
    async_lease: Annotated[float, Meta(ge=0.5, le=3600)] = 30.0
    """Seconds a claim of an async invocation holds without being extended (its gateway
    extends it every third of that while the run and its outcome last): how long after a
    gateway died, or lost the store, before another gateway sharing the store runs its
    invocations again (at least once)."""
    functions_poll: Annotated[float, Meta(gt=0, le=60)] = 0.5
    """Seconds between looks at a shared (PostgreSQL) store for deploys and removes made
    through other gateways: the most this gateway's functions lag behind them (besides
    starting the new version), though PostgreSQL announces most within milliseconds.
    Unused on SQLite, which one gateway owns."""
    functions_listen: bool = True
    """Listen for the changes PostgreSQL announces (LISTEN/NOTIFY).  Off behind a pooler
    that does not keep a session (PgBouncer in transaction mode): polling alone then."""
    runtime: RuntimeSettings = RuntimeSettings()
    infrastructures: list[InfraConfig] = msgspec.field(default_factory=_default_infrastructures)
    """Where invocations may run; the spanning scheduler places each one.  Env:
    ``SPANFAAS_INFRASTRUCTURES`` as a JSON list of tables."""
    scheduler: SchedulerSettings = SchedulerSettings()
    early_action: bool = True
    """Prewarm a function when its invoke request's headers arrive, before the body."""
    dns: DnsSettings = DnsSettings()
    events: EventSettings = EventSettings()
    images: ImageSettings = ImageSettings()

    def __post_init__(self) -> None:
        names = [i.name for i in self.infrastructures]
        if not names:
            raise ValueError("infrastructures is empty; configure at least one, e.g. {name = \"local\", kind = \"local\"}")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"infrastructure names must be unique; repeated: {', '.join(dupes)}")
        local = [i.name for i in self.infrastructures if i.kind == "local"]
        if len(local) > 1:
            raise ValueError(f"only one infrastructure may be kind local (this machine's runtime); found: {', '.join(local)}")
        for i in self.infrastructures:
            if i.kind == "remote" and not i.address:
                raise ValueError(f"infrastructure '{i.name}' (kind remote) needs an address, e.g. address = \"http://site:8080\"")
            if i.kind == "remote" and not i.address.startswith(("http://", "https://")):
                raise ValueError(
                    f"infrastructure '{i.name}' (kind remote) address '{i.address}' must start with http:// or https://, "
                    f"e.g. address = \"http://{i.address.split('://', 1)[-1]}\""
                )

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
            data = _read_toml(Path(path))
        fields = {f.name: f for f in msgspec.structs.fields(cls)}
        from_env: dict[str, str] = {}  # setting -> the variable it came from, named if it is refused
        for key, raw in env.items():
            if not key.startswith("SPANFAAS_") or key == "SPANFAAS_CONFIG":
                continue
            if key in _NOT_SETTINGS:
                continue
            name = key.removeprefix("SPANFAAS_").lower()
            if name in _TABLES:
                raise InvalidRequest(
                    f"environment variable {key} names the [{name}] table, which no variable sets; "
                    "set its keys in the config file (SPANFAAS_CONFIG)"
                )
            if name not in fields:  # refused, as an unknown key of the file is: a typo was ignored unseen
                if table := next((t for t in _TABLES if name.startswith(f"{t}_")), None):
                    raise InvalidRequest(f"environment variable {key} is no setting; {_table_key(table, name)}")
                known = [f"SPANFAAS_{f.upper()}" for f in fields if f not in _TABLES]
                close = difflib.get_close_matches(key, known, n=1)
                raise InvalidRequest(
                    f"environment variable {key} is no setting; {f'did you mean {close[0]}? ' if close else ''}"
                    "(remove it or fix its name; the settings are in spanfaas/config.py)"
                )
            if name == "infrastructures":
                try:
                    data[name] = msgspec.json.decode(raw)
                except msgspec.DecodeError:
                    raise InvalidRequest(
                        f"environment variable {key} must be a JSON list, e.g. "
                        '[{"name": "local", "kind": "local"}]'
                    ) from None
                from_env[name] = key  # not its value: it may hold a site's token
                continue
            data[name] = _coerce(key, raw, fields[name].type)
            from_env[name] = f"{key}={raw!r}"
        given = {k: v for k, v in overrides.items() if v is not None}
        data.update(given)
        try:
            return msgspec.convert(data, cls, strict=False)
        except msgspec.ValidationError as exc:
            problem, _, where = str(exc).rpartition(" - at `$.")
            table = where.rstrip("`") if problem else ""  # where an unknown key is: '' for the top level
            name = where.split(".", 1)[0].split("[", 1)[0].rstrip("`")
            unknown = re.match(r"Object contains unknown field `([^`]*)`", str(exc))
            if not problem:  # a top-level key no setting has (only the file has those), else
                # from Settings.__post_init__, whose checks are all of the infrastructures
                problem, name = str(exc), "" if unknown else "infrastructures"
            message, at = said.split(exc)
            words = said.problem(message, at, data, cls)  # msgspec's words in the platform's, or its own check's
            if name in from_env and name not in given:
                own = said.problem(message, at, {}, cls)  # (the variable's value is named already)
                detail = str(exc) if name == "infrastructures" else f"it {own}" if own != message else problem  # which entry, too
                raise InvalidRequest(f"environment variable {from_env[name]} is not valid: {detail}") from None
            if path and name not in given:  # from the file: name it, the user edits it
                if unknown:
                    raise InvalidRequest(f"config file {path} (SPANFAAS_CONFIG): {_unknown(table, unknown.group(1))}") from None
                if at:
                    raise InvalidRequest(f"config file {path} (SPANFAAS_CONFIG): {said.key_as_written(at, data)} {words}") from None
                raise InvalidRequest(f"config file {path} (SPANFAAS_CONFIG) has an invalid setting: {exc}") from None
            raise InvalidRequest(f"invalid settings: {said.key_as_written(at, data)} {words}" if at else f"invalid settings: {exc}") from None


def _read_toml(path: Path) -> dict[str, Any]:
    """The config file's table, or an error that says what is wrong with the file."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidRequest(f"config file {path} does not exist") from None
    except OSError as exc:  # a directory, a file this user may not read
        raise InvalidRequest(
            f"config file {path} (SPANFAAS_CONFIG) cannot be read: {exc.strerror or exc}; point SPANFAAS_CONFIG at a TOML file"
        ) from None
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"config file {path} (SPANFAAS_CONFIG) is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidRequest(f"config file {path} is not valid TOML: {exc}") from None


def _unknown(table: str, key: str) -> str:
    """An unknown key of the config file (``table`` as msgspec names it: ``runtime``,
    ``infrastructures[0]``), and the keys that table takes."""
    typ: Any = Settings
    for part in re.findall(r"[^.\[\]]+", re.sub(r"\[\d+\]", "", table)):
        field = {f.name: f for f in msgspec.structs.fields(typ)}.get(part)
        inner = field.type if field is not None else None
        inner = getattr(inner, "__args__", (inner,))[0] if getattr(inner, "__origin__", None) is list else inner
        if not (isinstance(inner, type) and issubclass(inner, Struct)):
            typ = None
            break
        typ = inner
    dotted = re.sub(r"\[\d+\]", "", table)
    name = f"{dotted}.{key}" if dotted else key
    if typ is None:
        return f"unknown setting '{name}'; remove it or fix its name"
    known = ", ".join(f.name for f in msgspec.structs.fields(typ))
    return f"unknown setting '{name}'; remove it or fix its name ({'[' + dotted + '] takes' if dotted else 'settings are'}: {known})"


def _coerce(key: str, raw: str, typ: Any) -> Any:
    try:
        if typ is int or "int" in str(typ):
            return int(raw)
        if typ is float or "float" in str(typ):
            return float(raw)
    except ValueError:
        raise InvalidRequest(f"environment variable {key}={raw!r} must be a number") from None
    return raw
