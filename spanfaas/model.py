"""Typed records shared by every layer.

Specs are frozen ``msgspec.Struct`` values validated once at the edge
(manifest parsing, HTTP decoding); everything past the edge trusts them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
import msgspec.inspect
from msgspec import Meta, Struct

from spanfaas.errors import InvalidManifest
from spanfaas.tomltext import KINDS, toml, value_at

if TYPE_CHECKING:
    from pathlib import Path  # (at run time where used: the zygote imports this module, see parse_manifest)

__all__ = [
    "Bundle",
    "EarlyStats",
    "ErrorInfo",
    "Event",
    "FunctionRecord",
    "FunctionSpec",
    "ImageRef",
    "ImageRequest",
    "INVOCATION_ID_FORM",
    "InfraInfo",
    "InvocationRecord",
    "InvokeContext",
    "MANIFEST_NAME",
    "Policy",
    "Preference",
    "Protection",
    "Resources",
    "Result",
    "Scaling",
    "TokenRecord",
    "Trigger",
    "TriggerRecord",
    "InvocationStatus",
    "invocation_id_problem",
    "is_invocation_id",
    "is_json_type",
    "load_manifest",
    "manifest_text",
    "missing_manifest",
    "manifest_trigger_id",
    "parse_manifest",
    "pattern_problem",
    "single_file_manifest",
]

MANIFEST_NAME = "spanfaas.toml"

RUNTIME_ENV = frozenset({"HOME", "TMPDIR"})
"""Environment variables every instance sets (to its scratch dir): ``[env]`` may not name them."""


def single_file_manifest(stem: str) -> str:
    """The manifest of a function deployed as one ``<stem>.py`` file with none beside it:
    the name from the stem (``_`` → ``-``), the handler ``<stem>:handler``.  Generated
    alike by the client and the bundle packer; the runtime knows such a bundle by it
    (its user has no spanfaas.toml to be told about)."""
    return f'name = "{stem.lower().replace("_", "-")}"\nhandler = "{stem}:handler"\n'


def is_json_type(content_type: str) -> bool:
    """Whether a body of this Content-Type is JSON: ``application/json`` or a ``+json`` type,
    in any case and with any parameters (RFC 9110 8.3.1).  The gateway checks such a body and
    every infrastructure hands it to the function decoded, so all of them ask this."""
    if content_type == "application/json":  # (the usual one, at once: this is on the invoke path)
        return True
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or media.endswith("+json")

FunctionName = Annotated[str, Meta(pattern=r"^[a-z][a-z0-9-]{0,62}$")]
HandlerRef = Annotated[str, Meta(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")]
Isolation = Literal["strict", "reuse"]
Network = Literal["none", "host"]


class Resources(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Limits for one instance of a function."""

    memory: Annotated[int, Meta(ge=16, le=65536)] = 256
    """MiB of memory one instance may use."""
    cpu: Annotated[float, Meta(gt=0, le=64)] = 1.0
    """CPU cores one instance may use (a CFS quota)."""
    timeout: Annotated[float, Meta(gt=0, le=3600)] = 30.0
    """Seconds an invocation may run before its instance is killed."""
    concurrency: Annotated[int, Meta(ge=1, le=1024)] = 1
    """Invocations one instance serves at once (reuse isolation only: more than 1 is refused in strict)."""
    pids: Annotated[int, Meta(ge=4, le=4096)] = 64
    """Processes and threads the whole function may have."""


class Scaling(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How the function's pool grows and shrinks."""

    min: Annotated[int, Meta(ge=0, le=1024)] = 0
    max: Annotated[int, Meta(ge=1, le=1024)] = 8
    prefork: Annotated[int, Meta(ge=0, le=64)] = 1
    """strict isolation: children kept forked ahead of demand.  reuse isolation: 0 or 1, whether
    one instance is kept ready ahead of demand (beyond ``min``); more is refused there."""
    queue: Annotated[int, Meta(ge=0, le=100_000)] = 256
    """Invocations that may wait for an instance before TooManyRequests."""
    idle_ttl: Annotated[float, Meta(ge=0)] = 300.0
    """Seconds without invocations before the pool scales to zero."""
    target_concurrency: Annotated[float, Meta(gt=0, le=1024)] | None = None
    """Invocations in flight (or waiting) per instance the autoscaler aims for; unset:
    what one instance serves at once (1 in strict isolation, resources.concurrency in reuse)."""
    cooldown: Annotated[float, Meta(ge=0)] = 30.0
    """Seconds the load must stay lower before the pool scales in (scale-out is immediate)."""


Preference = Literal["latency", "cost", "load", "locality", "spread"]


class Policy(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Where a function may run (constraints) and where it would rather run
    (ordered preferences): the ``[policy]`` table of its manifest.

    The defaults constrain nothing and prefer nothing: the first configured
    infrastructure that is up runs the invocation, the next ones take over
    when it fails (``fallback``).
    """

    infrastructures: list[Annotated[str, Meta(min_length=1)]] = []
    """Allow-list of infrastructure names, in no particular order; empty: any."""
    region: str = ""
    """A region or a glob of regions (``"eu-*"``); empty: any."""
    labels: dict[str, str] = {}
    """Labels the infrastructure must carry, each with this value (``"*"``: any value)."""
    gpu: bool = False
    """Run only where a GPU is declared."""
    min_memory: Annotated[int, Meta(ge=0, le=1 << 22)] = 0
    """MiB an instance must be allowed at least (besides ``resources.memory``)."""
    max_price: Annotated[float, Meta(ge=0)] | None = None
    """Highest acceptable price per GB-second; unset: any."""
    prefer: list[Preference] = []
    """Ordered preferences: the first weighs most."""
    locality: str = ""
    """For ``prefer = ["locality"]``: a site (infrastructure name or region) or a data set."""
    fallback: bool = True
    """When the chosen infrastructure fails, run on the next eligible one."""


class FunctionSpec(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A function's manifest (``spanfaas.toml``), validated."""

    name: FunctionName
    handler: HandlerRef = "handler:handler"
    isolation: Isolation = "strict"
    network: Network = "none"
    allow_subprocess: bool = False
    env: dict[str, str] = {}
    resources: Resources = Resources()
    scaling: Scaling = Scaling()
    policy: Policy = Policy()
    description: str = ""
    triggers: list[Trigger] = []
    """Events that start the function (``[[triggers]]``)."""
    image: ImageRequest | None = None
    """Third-party packages from curated lists, built into an image (``[image]``)."""

    @property
    def module(self) -> str:
        return self.handler.partition(":")[0]

    @property
    def function(self) -> str:
        return self.handler.partition(":")[2]


_PATH_RE = re.compile(r"at `\$\.?(.*)`")
_HINTS = {
    "name": "; a name is lowercase letters, digits and '-', starting with a letter (at most 63)",
    "handler": '; write it as module:function, e.g. handler = "handler:handler" for def handler in handler.py',
}
"""What a key whose value does not match its pattern should look like."""
_ITEM_HINTS = {
    "image.preload[]": ("is not a module name", 'preload names modules to import, e.g. preload = ["sklearn"]'),
    "image.lists[]": ("is not a curated list name", "lowercase letters, digits and '-', starting with a letter (spanfaas images curate ls)"),
    "image.python": ("is not a Python version", 'write major.minor, e.g. python = "3.11", or leave it out (the platform\'s)'),
    "triggers[].name": ("is not a trigger name", "lowercase letters, digits, '.', '_' or '-', starting with a letter or digit (at most 63)"),
}
"""The same, naming the value, for an item of a list or a ``[[table]]`` (msgspec's key carries its index) or a key."""
_ITEM_HINTS.update({
    "name": ("is not a function name", _HINTS["name"].removeprefix("; a name is ")),
    "handler": ("is not module:function", _HINTS["handler"].removeprefix("; ")),
})
_UNKNOWN_RE = re.compile(r"Object contains unknown field `([^`]*)`")
_TYPE_RE = re.compile(r"^Expected `([a-z]+)`, got `([a-z]+)`")
_RANGE_RE = re.compile(r"^Expected `(int|float)` (>=|<=|>|<) (\S+) - at")
_UNITS = {
    "resources.memory": "; in MiB, e.g. memory = 512",
    "resources.cpu": "; in cores, e.g. cpu = 0.5",
    "resources.timeout": "; in seconds, e.g. timeout = 30",
    "scaling.idle_ttl": "; in seconds, e.g. idle_ttl = 300",
}


def _wrong_type(data: dict[str, Any], key: str, expected: str, got: str) -> tuple[str, str] | None:
    """The key and message for a value of the wrong type: says what to write.

    msgspec names a table's entry ``env[...]``; the key that holds the bad value is named instead."""
    kind = KINDS.get(expected)
    if kind is None:
        return None
    if key.endswith("[...]"):  # an entry of a table of any keys ([env]): find it
        table = key[: -len("[...]")]
        entries = value_at(data, table)
        if not isinstance(entries, dict):
            return None
        bad = next((k for k, v in entries.items() if type(v).__name__ != expected and not (expected == "str" and isinstance(v, str))), None)
        if bad is None:
            return None
        key, value = f"{table}.{bad}", entries[bad]
        if expected == "str":
            write = f": write {_toml_key(bad)} = {toml(toml(value))}" if _scalar(value) else ""
            return key, f"[{table}] {_toml_key(bad)} must be {kind}, got {toml(value)}{write}"
    else:
        value = value_at(data, key)
    fix = _HINTS.get(key, "") or _UNITS.get(key, "") or _allowed_values(key)
    name = key.rpartition(".")[2]
    if not fix and expected == "str" and _scalar(value) and not name.endswith("]"):  # (a list's item: no `key = value` to write)
        fix = f"; write {_toml_key(name)} = {toml(toml(value))}"
    return key, f"{key} must be {kind}, got {toml(value) if value is not None else KINDS.get(got, got)}{fix}"


def _scalar(value: Any) -> bool:
    return value is not None and not isinstance(value, (dict, list))


def _toml_key(key: str) -> str:
    """A key as TOML needs it written: bare, or quoted."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else toml(key)


def _type_at(path: str) -> Any:
    """The msgspec type info of a manifest key (``resources.memory``, ``policy.prefer[0]``), or None."""
    t: Any = msgspec.inspect.type_info(FunctionSpec)
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        if isinstance(t, msgspec.inspect.UnionType):  # an optional table: its struct
            t = next((u for u in t.types if isinstance(u, msgspec.inspect.StructType)), None)
        if part.startswith("[") and isinstance(t, msgspec.inspect.ListType):
            t = t.item_type
        elif isinstance(t, msgspec.inspect.StructType):
            t = next((f.type for f in t.fields if f.encode_name == part), None)
        else:
            return None
    return t


_AT_LINE = re.compile(r"\(at line (\d+), column \d+\)$")
_BARE = re.compile(r"([A-Za-z0-9_.-]+)\s*=\s*([A-Za-z_][^#]*?)\s*(#.*)?")


def _syntax_problem(text: str, message: str) -> str:
    """tomllib's message ("Invalid value (at line 2, column 11)") with the line it names, and
    the fix for the two slips it says least about: a string without quotes
    (``handler = handler:handler``) and one whose closing quote is missing."""
    at = _AT_LINE.search(message)
    lines = text.splitlines()
    if at is None or not 0 < int(at.group(1)) <= len(lines) or not (line := lines[int(at.group(1)) - 1].strip()):
        return message
    hint = ""
    if message.startswith("Invalid value") and (bare := _BARE.fullmatch(line)) and bare.group(2) not in ("true", "false"):
        hint = f"; a string is written in quotes: {bare.group(1)} = {toml(bare.group(2))}"
    elif message.startswith("Illegal character '\\n'") and line.count('"') % 2 == 1:
        hint = "; a string's closing quote is missing"
    return f"{message}: {line}{hint}"


def _rewritten(key: str, value: Any) -> str:
    """``: write name = "bad-four"`` for a name or a handler whose fix follows from its value
    (``Bad_Four``; ``handler.handler``, a dot for the colon), when that fix is valid itself."""
    if not isinstance(value, str):
        return ""
    if key == "name":
        fixed, valid = re.sub(r"[^a-z0-9]+", "-", value.lower()).strip("-"), FunctionName
    elif key == "handler" and ":" not in value and "." in value:
        module, _, function = value.rpartition(".")
        fixed, valid = f"{module}:{function}", HandlerRef
    else:
        return ""
    try:
        msgspec.convert(fixed, valid)
    except msgspec.ValidationError:
        return ""
    return f": write {key} = {toml(fixed)}"


def _unknown_key_fix(table: str, key: str) -> str:
    """What an unknown key may mean: a key of a table written at the top level (its
    ``[resources]`` line forgotten: it is spelled right), or a key of the table misspelled."""
    if not table:
        homes = [f"[[{t[:-3]}]]" if t.endswith("[0]") else f"[{t}]" for t in _TABLES if key in _field_names(t)]
        if homes:
            return f"{key} is a key of {' or '.join(homes)}: move it under {homes[0]}" if len(homes) == 1 else (
                f"{key} is a key of {' or '.join(homes)}: move it under the one you mean")  # fmt: skip
    import difflib  # (deploy-time only: the zygote, and so every template, does without it)

    close = difflib.get_close_matches(key, _field_names(table), n=1)
    said = _known_keys(table)
    return f"did you mean {close[0]}? {said.removeprefix('check its spelling; ')}" if close else said


_TABLES = ("resources", "scaling", "policy", "image", "triggers[0]")
"""The manifest's tables of fixed keys (``[env]`` takes any), ``[[triggers]]`` by its first entry."""


def _field_names(table: str) -> list[str]:
    t = _type_at(table)
    if isinstance(t, msgspec.inspect.UnionType):
        t = next((u for u in t.types if isinstance(u, msgspec.inspect.StructType)), None)
    return [f.encode_name for f in t.fields] if isinstance(t, msgspec.inspect.StructType) else []


def _known_keys(table: str) -> str:
    t = _type_at(table)
    if isinstance(t, msgspec.inspect.UnionType):
        t = next((u for u in t.types if isinstance(u, msgspec.inspect.StructType)), None)
    if not isinstance(t, msgspec.inspect.StructType):
        return "check its spelling"
    names = ", ".join(f.encode_name for f in t.fields)
    where = f"[[{table.rpartition('[')[0]}]]" if table.endswith("]") else f"[{table}]" if table else "the top level"
    return f"check its spelling; {where} takes: {names}"


def _allowed_values(key: str, given: str | None = None) -> str:
    """The values ``key`` takes, and the one a misspelled ``given`` ("reused", "Host") may mean."""
    t = _type_at(key)
    if not isinstance(t, msgspec.inspect.LiteralType):
        return ""
    values = [str(v) for v in t.values]
    import difflib

    close = difflib.get_close_matches(given.lower(), values, n=1) if given is not None else []
    return "; use one of: " + ", ".join(repr(v) for v in t.values) + (f" (did you mean {close[0]!r}?)" if close else "")


def parse_manifest(text: str, *, source: str = MANIFEST_NAME, **overrides: Any) -> FunctionSpec:
    """Parse and validate a manifest; errors name the offending key."""
    import tomllib  # (here: the zygote imports this module for its records, and every template holds what it imports)

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidManifest(f"{source}: not valid TOML: {_syntax_problem(text, str(exc))}") from None
    data.update(overrides)
    try:
        spec = msgspec.convert(data, FunctionSpec)
    except msgspec.ValidationError as exc:
        msg = str(exc)
        m = _PATH_RE.search(msg)
        key = m.group(1) if m else ""
        hint = _HINTS.get(key, "") if "matching regex" in msg else ""
        if "matching regex" in msg and (item := _ITEM_HINTS.get(re.sub(r"\[\d+\]", "[]", key))):
            value, fix = value_at(data, key), _rewritten(key, value_at(data, key))
            rule = "" if fix and key == "handler" else f"; {item[1]}"  # (its rule's example would read as a second fix)
            msg, hint = f"{key} {value!r} {item[0]}{rule}{fix}", ""
        if unknown := _UNKNOWN_RE.match(msg):  # name the bad key itself, and the ones that table takes
            table, key = key, f"{key}.{unknown.group(1)}" if key else unknown.group(1)
            msg, hint = f"unknown field `{unknown.group(1)}`", f"; {_unknown_key_fix(table, unknown.group(1))}"
        elif "Invalid enum value" in msg and isinstance(value := value_at(data, key), str):
            msg, hint = f"{key} {toml(value)} is not a value it takes", _allowed_values(key, value)
        elif "Invalid enum value" in msg:
            hint = _allowed_values(key)
        elif (typed := _TYPE_RE.match(msg)) and (said := _wrong_type(data, key, typed.group(1), typed.group(2))):
            key, msg = said
        elif (ranged := _RANGE_RE.match(msg)) and _scalar(value := value_at(data, key)):
            kind, op, bound = ranged.groups()
            msg = f"{key} must be {KINDS[kind]} {op} {float(bound):g}, got {toml(value)}{_UNITS.get(key, '')}"
        where = f" (key '{key}')" if key else ""
        raise InvalidManifest(f"{source}{where}: {msg}{hint}", key=key or None) from None
    # Checked here, not in Scaling: specs already in a store must still decode.
    seen: dict[str, int] = {}
    for i, t in enumerate(spec.triggers):
        if problem := pattern_problem(t):
            key = f"triggers[{i}].{problem[0]}"
            raise InvalidManifest(f"{source} (key '{key}'): triggers[{i}].{problem[1]}", key=key)
        id = manifest_trigger_id(spec.name, t, i)
        if id in seen:
            raise InvalidManifest(
                f"{source} (key 'triggers[{i}].name'): triggers[{i}] has the id '{id}' of triggers[{seen[id]}]; "
                "give each trigger its own name",
                key=f"triggers[{i}].name",
            )
        seen[id] = i
    sc = spec.scaling
    if sc.min > sc.max:
        raise InvalidManifest(
            f"{source} (key 'scaling.min'): scaling.min = {sc.min} is more than scaling.max = {sc.max}; make min <= max",
            key="scaling.min",
        )
    if spec.isolation == "strict" and spec.resources.concurrency > 1:  # a strict instance serves one call
        raise InvalidManifest(
            f"{source} (key 'resources.concurrency'): resources.concurrency = {spec.resources.concurrency} has no effect "
            'with isolation = "strict" (each instance serves one call): remove it, or set isolation = "reuse"',
            key="resources.concurrency",
        )
    if spec.isolation == "reuse" and sc.prefork > 1:  # reuse keeps one instance ready, whatever the number
        raise InvalidManifest(
            f"{source} (key 'scaling.prefork'): scaling.prefork = {sc.prefork} does no more than prefork = 1 "
            'with isolation = "reuse" (one instance is kept ready ahead of demand): set prefork = 1, '
            'raise scaling.min to keep more instances ready, or set isolation = "strict"',
            key="scaling.prefork",
        )
    p = spec.policy
    if p.locality and "locality" not in p.prefer:  # it would weigh nothing: say so, not ignore it
        prefer = ", ".join(toml(x) for x in ["locality", *p.prefer])
        raise InvalidManifest(
            f"{source} (key 'policy.locality'): policy.locality = {toml(p.locality)} does nothing unless "
            f'policy.prefer has "locality"; add it, e.g. prefer = [{prefer}], or remove locality',
            key="policy.locality",
        )
    for var, value in spec.env.items():  # what os.environ / execve refuse, refused here with its key
        key, shown = f"env.{var}", _toml_key(var) if var.isprintable() else msgspec.json.encode(var).decode()
        if not var:
            wrong = '[env] has an empty name; name each variable, e.g. GREETING = "hello"'
            key = "env"
        elif "=" in var or "\0" in var:
            has, fix = ('"="', f", e.g. {var.replace('=', '_')}") if "=" in var else ("a NUL character", "")
            wrong = f"[env] {shown} is not an environment variable name: it has {has}; rename it{fix}"
        elif "\0" in value:
            wrong = f"[env] {shown} has a NUL character in its value; an environment variable cannot hold one"
        elif var in RUNTIME_ENV:  # each instance sets them: the manifest's value would be replaced without a word
            wrong = (f"[env] {var} is set by the runtime: each instance's own scratch dir (private and writable); "
                     f"name your variable otherwise, e.g. APP_{var}")  # fmt: skip
        else:
            continue
        raise InvalidManifest(f"{source} (key '{key}'): {wrong}", key=key)
    if "locality" in p.prefer and not p.locality:
        raise InvalidManifest(
            f"{source} (key 'policy.locality'): policy.prefer has \"locality\" but policy.locality is empty; "
            'name a site, a region or a data set, e.g. locality = "eu"',
            key="policy.locality",
        )
    return spec


def load_manifest(path: Path, **overrides: Any) -> FunctionSpec:
    """Read the manifest of a function directory (or a manifest file)."""
    from pathlib import Path

    path = Path(path)
    manifest = path / MANIFEST_NAME if path.is_dir() else path
    if not manifest.is_file():
        raise missing_manifest(path)
    return parse_manifest(manifest_text(manifest.read_bytes(), str(manifest)), source=str(manifest), **overrides)


def missing_manifest(path: Path) -> InvalidManifest:
    """The error for a function directory without a manifest, with the one to write: the
    directory's name as the function's (when it makes one), and the handler when the
    directory's one module is not the default's (``handler.py``)."""
    name = re.sub(r"[^a-z0-9]+", "-", path.name.lower()).strip("-")
    try:
        msgspec.convert(name, FunctionName)
    except msgspec.ValidationError:
        name = "my-function"
    write = f"name = {toml(name)}"
    modules = sorted(p.stem for p in path.glob("*.py")) if path.is_dir() else []
    if len(modules) == 1 and modules[0] != "handler" and modules[0].isidentifier():
        write += f' and handler = "{modules[0]}:handler"'
    return InvalidManifest(f"no {MANIFEST_NAME} in {path}; create one with at least: {write}")


def manifest_text(data: bytes, source: str = MANIFEST_NAME) -> str:
    """A manifest's bytes as text: UTF-8, as TOML is, without the byte-order mark some editors write."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InvalidManifest(
            f"{source}: not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); TOML files are UTF-8: save it as UTF-8"
        ) from None


ListName = Annotated[str, Meta(pattern=r"^[a-z][a-z0-9-]{0,62}$")]
ModuleName = Annotated[str, Meta(pattern=r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")]


class ImageRequest(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The ``[image]`` table of a manifest: packages chosen from curated lists,
    which the platform builds into an image the function runs on::

        [image]
        python = "3.11"
        packages = ["numpy>=2", "pillow"]
        lists = ["science"]
        preload = ["numpy"]
    """

    python: Annotated[str, Meta(pattern=r"^(3\.\d{1,2})?$")] = ""
    """Major.minor of the interpreter; empty: the platform's."""
    packages: list[Annotated[str, Meta(min_length=1, max_length=500)]] = []
    """PEP 508 requirements (a name and a version range; no URLs)."""
    lists: list[ListName] = []
    """Curated lists to choose from; the first that approves a package decides its range."""
    preload: list[ModuleName] = []
    """Modules the image's zygote imports once, shared by every function on the image."""

    def __post_init__(self) -> None:
        from packaging.requirements import InvalidRequirement, Requirement
        from packaging.utils import canonicalize_name

        seen: set[str] = set()
        for text in self.packages:
            try:
                req = Requirement(text)
            except InvalidRequirement as exc:
                raise ValueError(f"image package {text!r} is not a valid requirement ({exc}); write e.g. \"numpy>=1.26\"") from None
            if req.url:
                raise ValueError(f"image package {text!r} is a direct reference; request a name and a version range from a curated list")
            name = canonicalize_name(req.name)
            if name in seen:
                raise ValueError(f"image package {req.name!r} is requested twice; merge the ranges into one entry")
            seen.add(name)
        if len(set(self.lists)) != len(self.lists):
            raise ValueError("image lists name a list twice")


class ImageRef(Struct, frozen=True, kw_only=True):
    """A built image as the runtime needs it: where its packages are."""

    id: str
    paths: list[str]
    """Directories put first on the function's ``sys.path`` (the image's site-packages)."""
    preload: list[str] = []
    """Modules the image's zygote imports once, shared by every function on the image."""


class Bundle(Struct, frozen=True):
    """A function's code, unpacked on disk, named by the sha256 of its archive."""

    digest: str
    path: str
    image: ImageRef | None = None


class InvokeContext(Struct, frozen=True, kw_only=True):
    """What the caller says about one invocation."""

    invocation_id: str
    content_type: str = "application/json"
    timeout: float | None = None
    """Overrides the manifest timeout when shorter."""
    event: dict[str, Any] | None = None
    """The CloudEvent attributes when the invocation came from an event."""
    on_start: Callable[[], None] | None = None
    """Called by the infrastructure when the run starts: the call leaves the queues on
    this side for what runs it (the local runtime: handed to an instance; Ray, a remote
    site: sent there).  The async dispatcher tells a run that started from one that only
    waited by it.  Cheap and synchronous, on the event loop; may be called more than once
    (a failover); never sent anywhere."""
    on_refused: Callable[[], None] | None = None
    """Called by the infrastructure when what it told ``on_start`` of was refused before it
    ran: a remote site that took the request answered that it runs nothing of it (429, its
    function full; 404, it lacks the function; 401/403, our token).  That start was none
    (a failover then starts it elsewhere).  As ``on_start``: cheap, on the event loop."""


class ErrorInfo(Struct, frozen=True, kw_only=True):
    """Why a function failed: what the user needs to fix it."""

    kind: Literal["error", "timeout", "oom", "crashed", "infra"]
    """``infra``: the platform failed (only in records of async invocations that gave up)."""
    type: str = ""
    message: str = ""
    traceback: str = ""
    exit_status: int | None = None


class Result(Struct, frozen=True, kw_only=True):
    """The outcome of one invocation that reached the function."""

    invocation_id: str
    function: str
    output: bytes = b""
    content_type: str = "application/json"
    error: ErrorInfo | None = None
    logs: str = ""
    duration_ms: float = 0.0
    cold: bool = False
    infra: str = "local"
    """Where it ran: an infrastructure's name (``local``, a site's); through a site that
    failed the call over itself, the path to where it ran there (``eu/local``), as ``tried`` names it."""
    tried: list[str] = []
    """The infrastructures tried before ``infra`` ran it, each as ``"name: why it failed"``
    (a site that stopped answering may have run it too)."""

    @property
    def ok(self) -> bool:
        return self.error is None

    def raise_for_error(self) -> None:
        """Raise the typed FunctionFailed subclass if the function failed."""
        if self.error is None:
            return
        from spanfaas import errors

        cls: type[errors.SpanfaasError] = {
            "error": errors.FunctionError,
            "timeout": errors.FunctionTimeout,
            "oom": errors.FunctionOutOfMemory,
            "crashed": errors.FunctionCrashed,
            "infra": errors.InfraError,
        }[self.error.kind]
        if self.error.kind == "infra":  # the platform's error that ended it, by name: not found is not a failure
            named = errors.error_class(self.error.type)
            if named is not None and issubclass(named, (errors.InfraError, errors.NotFound)):
                cls = named
        msg = self.error.message or self.error.kind
        if self.error.type:
            msg = f"{self.error.type}: {msg}"
        raise cls(
            msg,
            invocation_id=self.invocation_id,
            error_type=self.error.type,
            traceback=self.error.traceback,
            exit_status=self.error.exit_status,
            logs=self.logs,
        )


class Protection(Struct, frozen=True):
    """One sandbox mechanism and whether it is in force."""

    name: str
    active: bool
    reason: str = ""


class EarlyStats(Struct, kw_only=True):
    """Early action and scaling of one function on one infrastructure (counts since it started).

    Triggers: ``headers`` (an invoke request, before its body), ``dns`` (a
    lookup of the function's name), ``predict`` (its arrival histogram),
    ``api`` (any other caller of ``prewarm``).
    """

    prewarms: dict[str, int] = {}
    """Templates started ahead of a call, by trigger."""
    avoided: dict[str, int] = {}
    """Cold starts avoided: the next call found the prewarmed template ready."""
    overlapped: dict[str, int] = {}
    """Cold starts shortened: the next call found the prewarmed template still starting."""
    wasted: dict[str, int] = {}
    """Prewarms that no call followed before their hold ended, or that the gateway released."""
    scale: dict[str, int] = {}
    """Scale events: ``out``, ``in``, ``zero``."""
    desired: int = 0
    """Instances the autoscaler wants now."""
    instances: int = 0
    """Live instances now (0: scaled to zero)."""


class InfraInfo(Struct, kw_only=True):
    """An infrastructure's declared capabilities and live state."""

    name: str
    kind: str
    region: str = "local"
    labels: dict[str, str] = {}
    gpu: bool = False
    max_memory: int = 65536
    max_timeout: float = 3600.0
    python: str = ""
    isolation: list[str] = msgspec.field(default_factory=lambda: ["strict", "reuse"])
    price_per_gb_s: float = 0.0
    datasets: list[str] = []
    """Data sets held at (or near) this infrastructure, for ``prefer = ["locality"]``."""
    images: bool = True
    """Whether it can run functions on an ``[image]`` (builds it or has it built)."""
    healthy: bool = True
    reason: str = ""
    """Why it is not healthy (empty when it is): unreachable, refusing our token, ..."""
    queue_depth: int = 0
    free_slots: int = 0
    instances: int = 0
    functions: int = 0
    ewma_latency_ms: float = 0.0
    error_rate: float = 0.0
    protections: list[Protection] = []


# -- records kept by the store ------------------------------------------------

InvocationStatus = Literal["queued", "running", "succeeded", "failed"]

INVOCATION_ID_FORM = "32 lowercase hexadecimal characters, e.g. 3f9a0c5e7b2d4f61a8c09e2b7d5f3a14"
"""What an invocation id looks like, in words (the gateway's and the event service's ``InvocationIds``
make them: a random prefix of 16 and a counter of 16 hex digits)."""
_INVOCATION_ID = re.compile(r"[0-9a-f]{32}")


def is_invocation_id(value: str) -> bool:
    """Whether ``value`` has the form of an invocation id (whether one is known by it is the store's to say)."""
    return _INVOCATION_ID.fullmatch(value) is not None


def invocation_id_problem(value: str) -> str | None:
    """Why ``value`` is not an invocation id, or None if it has the form of one (the caller adds where ids come from)."""
    if is_invocation_id(value):
        return None
    return f"{value!r} is not an invocation id: an invocation id is {INVOCATION_ID_FORM}"


class FunctionRecord(Struct, frozen=True, kw_only=True):
    """One deployed version of a function."""

    name: str
    version: int
    digest: str
    """sha256 of the bundle blob."""
    spec: FunctionSpec
    created_at: float


class InvocationRecord(Struct, kw_only=True):
    """One invocation, from acceptance to its recorded outcome."""

    id: str
    function: str
    status: InvocationStatus
    mode: Literal["sync", "async"] = "sync"
    content_type: str = "application/json"
    payload: bytes = b""
    output: bytes = b""
    output_type: str = "application/json"
    error: ErrorInfo | None = None
    logs: str = ""
    attempts: int = 0
    """Runs started (async: each claim, less the claims given back before their run
    started: the function's queue was full, or the gateway stopped)."""
    idempotency_key: str | None = None
    infra: str = ""
    """Where it ran: an infrastructure's name (``local``, a site's); through a site that
    failed the call over itself, the path to where it ran there (``eu/local``), as ``tried`` names it."""
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    not_before: float = 0.0
    """Async queue: do not dispatch before this time (retry backoff)."""
    duration_ms: float | None = None
    """How long the function ran, as its infrastructure measured it."""
    cold: bool = False
    event: Event | None = None
    """The CloudEvent that started it (async invocations made by a trigger)."""
    reruns: int = 0
    """Of ``attempts``, the runs started again because an earlier one that had started left
    no outcome (its gateway died): they do not use up the retries of failed runs."""
    origin: str = ""
    """On a site: the id of this invocation on the gateway that placed it here (which the
    function saw as ``context.invocation_id``); empty for a call made here."""
    reclaims: int = 0
    """Async: claims given back because their gateway died before the run started (it
    waited in the function's queue, or for a deploy): no runs, so counted here, not in
    ``attempts`` or ``reruns``."""
    tried: list[str] = []
    """The infrastructures the spanning scheduler tried before ``infra`` ran it, each as
    ``"name: why it failed there"`` (a site that stopped answering may have run it too)."""


class TokenRecord(Struct, frozen=True, kw_only=True):
    """An API token; only its sha256 is stored."""

    id: str
    name: str
    scopes: list[Literal["admin", "deploy", "invoke"]]
    token_hash: str
    created_at: float


# -- events and triggers ------------------------------------------------------

_ATTRIBUTE = re.compile(r"^[a-z0-9]{1,20}$")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
"""What CloudEvents 1.0 forbids in a string attribute: a pattern holding one never matches."""


class Trigger(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One ``[[triggers]]`` entry of a manifest: which CloudEvents start the function.

    Patterns are shell globs (``*``, ``?``, ``[...]``) matched against the whole
    attribute, case-sensitively.  An event matches when its ``source``,
    ``type``, ``subject`` (when given) and every filtered attribute match.

    A trigger with a ``schedule`` (a cron expression) fires on its own ticks
    instead, in ``timezone``; a sixth field counts seconds.  After a pause (a
    restart), the ticks it missed fire per ``missed``: none (``skip``), the
    most recent one (``latest``) or each of them (``all``, up to a limit).
    """

    name: Annotated[str, Meta(pattern=r"^([a-z0-9][a-z0-9._-]{0,62})?$")] = ""
    source: Annotated[str, Meta(min_length=1)] = "*"
    """The events' ``source`` attribute, e.g. ``"s3://photos"``, ``"webhook/github"``."""
    type: Annotated[str, Meta(min_length=1)] = "*"
    """The events' ``type`` attribute, e.g. ``"com.github.push"``."""
    subject: str | None = None
    """The events' ``subject`` (S3: the object key), e.g. ``"uploads/*.jpg"``."""
    filters: dict[str, str] = {}
    """Further attributes (extensions too) and the pattern each must match."""
    schedule: str = ""
    timezone: str = "UTC"
    missed: Literal["skip", "latest", "all"] = "latest"

    def __post_init__(self) -> None:
        for key in self.filters:
            if not _ATTRIBUTE.match(key):
                raise ValueError(f"filter {key!r} is not a CloudEvent attribute name (lowercase letters and digits)")
        if not self.schedule:
            return
        if self.source != "*" or self.type != "*" or self.subject is not None or self.filters:
            raise ValueError(
                "a trigger with a schedule fires on its own ticks: leave out source, type, subject and filters"
            )
        from croniter import CroniterBadCronError, CroniterBadDateError, croniter  # type: ignore[import-untyped]

        try:
            croniter(self.schedule).get_next(float)
        except CroniterBadCronError as exc:
            raise ValueError(
                f"schedule {self.schedule!r} is not a cron expression ({exc}); e.g. \"*/5 * * * *\" (every 5 minutes)"
            ) from None
        except CroniterBadDateError:
            raise ValueError(
                f"schedule {self.schedule!r} never fires: no date to come matches it (a 31 February, a year gone by?)"
            ) from None
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"timezone {self.timezone!r} is not known; use an IANA name like \"Europe/Berlin\"") from None


def pattern_problem(trigger: Trigger) -> tuple[str, str] | None:
    """The field of ``trigger`` whose pattern holds a control character (or whose schedule is
    written seconds first), and what to say of it; None when there is none.  Checked where triggers come in (a manifest, the API), not in
    ``Trigger``: triggers already in a store must still decode."""
    patterns = {"source": trigger.source, "type": trigger.type, "subject": trigger.subject or ""}
    for field, pattern in [*patterns.items(), *((f"filters.{k}", v) for k, v in trigger.filters.items())]:
        if m := _CONTROL.search(pattern):
            return field, (
                f"{field} {pattern!r} contains the control character U+{ord(m.group()):04X}; no event's "
                "attribute holds one (CloudEvents 1.0 forbids U+0000-U+001F and U+007F-U+009F), so it "
                "would never match: remove it"
            )
    return _seconds_first(trigger.schedule)


def _seconds_first(schedule: str) -> tuple[str, str] | None:
    """A 6-field schedule that fires every second of the minutes it matches -- ``*`` in its
    seconds (the 6th field) and not in its minute: one written seconds first, as Quartz and
    Spring do ('*/2 * * * * *' for every 2 seconds), which here fires 60 times a minute."""
    fields = schedule.split()
    if len(fields) != 6 or fields[5] != "*" or fields[0] == "*":
        return None
    meant = " ".join([*fields[1:], fields[0]])
    return "schedule", (
        f"schedule {schedule!r} fires every second of each minute it matches (60 times a minute): "
        f"the 6th field counts seconds, after the day of week (not first, as in Quartz); for "
        f"{fields[0]!r} seconds write {meant!r}, or give the seconds a value ('{' '.join([*fields[:5], '0'])}': at second 0)"
    )


def manifest_trigger_id(function: str, trigger: Trigger, index: int) -> str:
    """The id of a manifest's trigger: ``<function>:<name>``, or ``<function>:<index>`` when unnamed."""
    return f"{function}:{trigger.name or index}"


class TriggerRecord(Struct, frozen=True, kw_only=True):
    """A trigger in force: declared in a manifest or added through the API."""

    id: str
    """``<function>:<name or index>`` for manifest triggers, ``trg_…`` for API ones."""
    function: str
    trigger: Trigger
    origin: Literal["manifest", "api"] = "api"
    created_at: float = 0.0


class Event(Struct, frozen=True, kw_only=True):
    """The CloudEvent an invocation came from: its attributes (the payload
    carries the whole event), the proxy that translated it and the trigger
    that matched it."""

    attributes: dict[str, Any]
    proxy: str = ""
    trigger: str = ""
