"""An image's lock: the pinned packages uv resolved, and the image id it names.

uv writes the lock in requirements format with hashes and ``# via``
annotations::

    numpy==2.4.6 \\
        --hash=sha256:89cd…
        # via -r requirements.in
    tinyb==1.5 \\
        --hash=sha256:8a71…
        # via tinya

The image id is the sha256 of the Python version, the platform and the
*normalized* lock (pins and hashes, sorted; no comments), so the same
resolution gives the same image whatever the request that led to it.
"""

from __future__ import annotations

import hashlib
import re
import sysconfig

from spanfaas.images.ranges import canonical
from spanfaas.store.images import LockedPackage

__all__ = ["image_id", "normalize", "parse_lock"]

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s\\;]+)")
_HASH = re.compile(r"--hash=(\w+:[0-9a-f]+)")


def parse_lock(text: str, direct: set[str] | frozenset[str] = frozenset()) -> list[LockedPackage]:
    """The pinned packages of a lock, each with what needs it."""
    out: list[LockedPackage] = []
    current: tuple[str, str] | None = None
    via: list[str] = []
    in_via = False

    def flush() -> None:
        if current is not None:
            name, version = current
            needs = sorted({v for v in via if not v.startswith("-")})
            out.append(LockedPackage(name=name, version=version, direct=name in direct, via=needs))

    for raw in text.splitlines():
        line = raw.strip()
        if m := _PIN.match(raw):
            flush()
            current, via, in_via = (canonical(m.group(1)), m.group(3)), [], False
        elif line.startswith("# via"):
            rest = line.removeprefix("# via").strip()
            in_via = not rest
            if rest:
                via.append(canonical(rest) if not rest.startswith("-") else rest)
        elif in_via and line.startswith("#"):
            name = line.lstrip("#").strip()
            if name:
                via.append(canonical(name) if not name.startswith("-") else name)
        elif not line.startswith("--hash"):
            in_via = False
    flush()
    return sorted(out, key=lambda p: p.name)


def normalize(text: str) -> str:
    """The lock without comments or layout: one ``name==version hash…`` line per package, sorted."""
    entries: dict[str, list[str]] = {}
    current = ""
    for raw in text.splitlines():
        if m := _PIN.match(raw):
            current = f"{canonical(m.group(1))}{m.group(2) or ''}=={m.group(3)}"
            entries[current] = []
        elif current:
            entries[current].extend(_HASH.findall(raw))
    return "".join(f"{pin} {' '.join(sorted(h))}".rstrip() + "\n" for pin, h in sorted(entries.items()))


def image_id(python: str, lock: str) -> str:
    """sha256 of the Python version, the platform and the normalized lock."""
    h = hashlib.sha256()
    h.update(f"python {python}\nplatform {sysconfig.get_platform()}\n".encode())
    h.update(normalize(lock).encode())
    return h.hexdigest()
