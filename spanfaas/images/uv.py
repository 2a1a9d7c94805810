"""Running uv: resolve an approved plan to a lock, install a lock into a directory.

uv runs as a subprocess with ``--no-config`` (no user or project settings
leak in) and the sources the admin configured (``[images]``): an index, or
local wheelhouses with ``--no-index --offline``.  Its output is handed line
by line to the caller (the build log); a failure raises ImageBuildFailed
carrying uv's own message (the resolver says which requirement cannot be met).
A run past ``[images] build_timeout`` is stopped and raises ImageBuildTimeout,
and a package source uv could not reach (after ``[images] http_retries``)
raises ImageSourceUnreachable: the platform's failures (504, 502), not the
request's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from spanfaas.config import ImageSettings
from spanfaas.errors import ImageBuildFailed, ImageBuildTimeout, ImageSourceUnreachable, InfraUnavailable
from spanfaas.images.curation import Plan

__all__ = ["LOCK_NAME", "Uv", "find_uv"]

LOCK_NAME = "requirements.lock"
Log = Callable[[str], None]

# uv's words when a source is out of reach rather than the request unsatisfiable
# (uv 0.13: "Failed to fetch", "error sending request", "tcp connect error",
# "dns error", "HTTP status server error (503 ...)", "Failed to read `--find-links`").
_UNREACHABLE = re.compile(
    r"Failed to fetch|error sending request|tcp connect error|dns error|connection (refused|reset)|"
    r"operation timed out|server error \(5\d\d|Failed to read `--find-links`",
    re.IGNORECASE,
)


def find_uv(configured: str = "") -> str:
    if configured:
        return configured
    try:
        from uv import find_uv_bin
    except ImportError:
        raise InfraUnavailable("uv is not installed; install it with: pip install uv (it ships the uv binary)") from None
    try:
        return find_uv_bin()
    except FileNotFoundError:
        raise InfraUnavailable("the uv package is installed but its binary is missing; reinstall it: pip install --force-reinstall uv") from None


class Uv:
    def __init__(self, settings: ImageSettings, cache_dir: Path, *, python: str = sys.executable) -> None:
        self.settings = settings
        self.cache_dir = cache_dir
        self.python = python
        self.binary = find_uv(settings.uv)

    def source_args(self) -> list[str]:
        s = self.settings
        args: list[str] = []
        if s.offline:
            args += ["--no-index", "--offline"]
        else:
            if s.index_url:
                args += ["--index-url", s.index_url]
            for url in s.extra_index_urls:
                args += ["--extra-index-url", url]
        for d in s.find_links:  # uv runs in a work directory: make local paths absolute
            args += ["--find-links", d if "://" in d else str(Path(d).expanduser().resolve())]
        return args

    def _common(self) -> list[str]:
        return ["--no-config", "--color", "never", "--cache-dir", str(self.cache_dir), "--python", self.python]

    async def compile(self, plan: Plan, workdir: Path, log: Log) -> str:
        """Resolve ``plan`` to a lock (pins with hashes); uv's message on failure."""
        (workdir / "requirements.in").write_text("".join(r + "\n" for r in plan.requirements))
        (workdir / "constraints.txt").write_text("".join(c + "\n" for c in plan.constraints))
        args = ["pip", "compile", "requirements.in", "-c", "constraints.txt", "-o", LOCK_NAME,
                "--generate-hashes", "--no-header", "--quiet", *self._common(), *self.source_args()]  # fmt: skip
        await self._run(args, workdir, log, what="resolve")
        return (workdir / LOCK_NAME).read_text()

    async def install(self, lock: Path, target: Path, log: Log) -> None:
        """Install exactly the lock's pins (hash-checked, no dependencies) into ``target``,
        compiled to bytecode: functions run as another uid on a read-only view of the
        image and could never write it, so without it every template would compile
        the packages' sources on import (numpy: ~0.1 s more per cold start)."""
        args = ["pip", "install", "--target", str(target), "--no-deps", "--require-hashes", "--compile-bytecode",
                "-r", str(lock), *self._common(), *self.source_args()]  # fmt: skip
        await self._run(args, lock.parent, log, what="install")

    async def _run(self, args: Sequence[str], cwd: Path, log: Log, *, what: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "PIP_", "VIRTUAL_ENV", "PYTHON"))}
        env["UV_NO_PROGRESS"] = "1"
        env["UV_HTTP_RETRIES"] = str(self.settings.http_retries)
        proc = await asyncio.create_subprocess_exec(
            self.binary, *args, cwd=cwd, env=env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        assert proc.stdout is not None
        lines: list[str] = []

        async def pump() -> None:
            assert proc.stdout is not None
            async for raw in proc.stdout:
                line = raw.decode(errors="replace").rstrip()
                if line:
                    lines.append(line)
                    log(line)

        try:
            async with asyncio.timeout(self.settings.build_timeout):  # (wait_for drops a cancel on 3.11)
                await asyncio.gather(pump(), proc.wait())
        except TimeoutError:
            proc.kill()
            await proc.wait()
            limit = self.settings.build_timeout
            raise ImageBuildTimeout(
                f"the image build timed out: uv {what} did not finish within {limit:g} s ([images] build_timeout); "
                "the package sources may be slow or unreachable. Try again later; if it keeps happening, "
                "an admin can check the gateway's [images] index_url and find_links or raise build_timeout",
                phase=what,
                timeout=limit,
            ) from None
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        if proc.returncode != 0:
            message = "\n".join(line for line in lines if not line.startswith("Using ")) or f"exit status {proc.returncode}"
            if any(_UNREACHABLE.search(line) for line in lines):
                raise ImageSourceUnreachable(
                    f"uv could not {what} the image: a package source is unreachable: {message}\n"
                    "Nothing is wrong with the request; try again later. If it keeps happening, an admin can "
                    "check the gateway's network and its [images] index_url, extra_index_urls and find_links",
                    phase=what,
                    tool_output=lines[-50:],
                )
            raise ImageBuildFailed(f"uv could not {what} the image: {message}", tool_output=lines[-50:])
