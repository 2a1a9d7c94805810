"""Run a real gateway process for tests: ``python -m spanfaas.gateway`` on a free port.

    with GatewayProcess(tmp_path / "data", infra="memory") as gw:
        httpx.get(gw.url + "/healthz")
        gw.kill()            # SIGKILL, as a crash would
        gw.start()           # again, on the same data dir

Its output goes to ``<data_dir>/../gateway-<n>.log``; the first start's admin
token is kept in ``admin_token``.  The gateway dies with the process that started
it (``PR_SET_PDEATHSIG``), so a test run that is itself killed leaves no gateway
behind; the signal follows the thread that called ``start()``: call it from one
that lives as long as the gateway (the main thread).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

__all__ = ["GatewayProcess"]

_LISTENING = re.compile(r"listening on (http://\S+)")
_TOKEN = re.compile(r"admin token \(shown once\): (\S+)")
PR_SET_PDEATHSIG = 1


def _dying_with(parent: int) -> Callable[[], None]:
    """A ``preexec_fn``: in the child, before exec, SIGKILL it when ``parent`` dies; exit
    at once when ``parent`` died already (before the signal was set).  ``prctl`` is looked
    up here, in the parent: the child only calls it."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def preexec() -> None:
        if prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0 or os.getppid() != parent:
            os._exit(1)

    return preexec


class GatewayProcess:
    def __init__(
        self,
        data_dir: str | Path,
        *,
        infra: str = "memory",
        store: str | None = None,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        python: str = sys.executable,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.infra = infra
        self.store = store
        self.env = dict(env or {})
        self.args = list(args)
        self.python = python
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.admin_token: str | None = None
        self.starts = 0
        self.log_path = self.data_dir.parent / "gateway-0.log"

    def start(self, timeout: float = 60.0) -> GatewayProcess:
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("the gateway is already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        self.log_path = self.data_dir.parent / f"gateway-{self.starts}.log"
        cmd = [self.python, "-m", "spanfaas.gateway", "--host", "127.0.0.1", "--port", "0",
               "--data-dir", str(self.data_dir), "--infra", self.infra, *self.args]  # fmt: skip
        if self.store:
            cmd += ["--store", self.store]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                         preexec_fn=_dying_with(os.getpid()))  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_text(errors="replace")
            if m := _TOKEN.search(text):
                self.admin_token = m.group(1)
            if m := _LISTENING.search(text):
                self.url = m.group(1)
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"the gateway exited with {self.proc.returncode}:\n{text}")
            time.sleep(0.02)
        self.kill()
        raise TimeoutError(f"the gateway did not start in {timeout} s:\n{self.log_path.read_text(errors='replace')}")

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.admin_token}"} if self.admin_token else {}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait (graceful); SIGKILL if it does not stop in time."""
        if self.proc is None:
            return 0
        proc = self.proc
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._stuck(timeout)
        self.proc = None
        return int(proc.returncode)

    def _stuck(self, timeout: float) -> None:
        """A graceful stop that did not end: its stacks into the log (SIGUSR1, stacks.py),
        then SIGKILL; a warning carries the log's end, so the test run shows where it waited."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGUSR1)
        time.sleep(1.0)
        tail = "\n".join(self.log().splitlines()[-150:])
        self.kill()
        warnings.warn(f"the gateway did not stop in {timeout} s after SIGTERM; killed. Its log ends:\n{tail}", stacklevel=3)

    def kill(self) -> None:
        """SIGKILL the gateway's whole process group, as a crash would."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        self.proc = None

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
