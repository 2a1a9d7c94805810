"""Turn what the user points at (a function directory or one ``.py`` file) into a bundle.

The manifest is validated here first, so a bad manifest or an impossible
name fails before the upload with the key named.  A single file uses the
``spanfaas.toml`` beside it if there is one; otherwise its manifest is
generated: the name from the file's stem (``_`` → ``-``), the handler
``<stem>:handler``.  The bytes are ``spanfaas.gateway.bundle.pack_function``'s
deterministic tar.gz (same files, same digest).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from spanfaas.errors import InvalidManifest
from spanfaas.model import MANIFEST_NAME, FunctionSpec, load_manifest, parse_manifest, single_file_manifest

__all__ = ["PackedFunction", "pack"]

_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")


@dataclass(frozen=True, slots=True)
class PackedFunction:
    """A function ready to upload: its validated spec and its tar.gz bytes."""

    spec: FunctionSpec
    data: bytes

    @property
    def name(self) -> str:
        return self.spec.name


def pack(path: str | Path) -> PackedFunction:
    """Validate and pack a function directory or a single ``.py`` file."""
    path = Path(path)
    if path.is_file() and path.name == MANIFEST_NAME:
        path = path.parent
    if path.is_dir():
        spec = load_manifest(path)
    elif path.is_file() and path.suffix == ".py":
        spec = _file_spec(path)
    elif not path.exists():
        raise InvalidManifest(f"{path} does not exist; pass a function directory or a .py file")
    else:
        raise InvalidManifest(f"{path} is neither a function directory nor a .py file")
    # imported here: spanfaas.gateway loads the server side (Starlette), which the SDK needs only to pack
    from spanfaas.gateway.bundle import pack_function

    return PackedFunction(spec, pack_function(path))


def _file_spec(path: Path) -> FunctionSpec:
    beside = path.with_name(MANIFEST_NAME)
    if beside.is_file():
        spec = load_manifest(beside)
        from spanfaas.gateway.bundle import SKIP_DIRS, SKIP_SUFFIXES  # (imported here: as pack_function is)

        # Only the file is uploaded: the directory's other files would be missing from the new version.
        others = sorted(
            n for n in os.listdir(path.parent)
            if n not in (path.name, MANIFEST_NAME) and n not in SKIP_DIRS and not n.endswith(SKIP_SUFFIXES)
        )  # fmt: skip
        if others:
            shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
            raise InvalidManifest(
                f"{path} is one file of the function directory {path.parent} ('{spec.name}' in its {MANIFEST_NAME}), "
                f"which holds other files too ({shown}); deploy the directory: spanfaas deploy {path.parent} "
                f"(the file alone would replace '{spec.name}' with a version that has only {path.name})"
            )
        return spec
    stem = path.stem
    name = stem.lower().replace("_", "-")
    if not _NAME_RE.match(name) or not stem.isidentifier():
        raise InvalidManifest(
            f"cannot make a function name from {path.name!r}: a name is lowercase letters, digits "
            "and '-', starting with a letter; rename the file or deploy a directory with a spanfaas.toml"
        )
    return parse_manifest(single_file_manifest(stem), source=f"{path} (generated manifest)")
