"""The invocation loop inside one instance (a child forked from a template).

It reads ``Invoke`` frames, runs the handler with stdout/stderr captured in
a memfd (so output of C extensions and subprocesses is captured too), and
answers ``Done`` with the output as the frame body.  In ``strict`` isolation
the instance serves exactly one invocation and exits without tearing the
interpreter down; in ``reuse`` it loops.
"""

from __future__ import annotations

import codecs
import contextvars
import inspect
import io
import os
import re
import select
import socket
import sys
import threading
import time
import traceback
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, NoReturn, TextIO

import msgspec

from spanfaas.clipping import keep_ends
from spanfaas.errors import format_sizes
from spanfaas.model import ErrorInfo, is_json_type
from spanfaas.runtime import protocol as p
from spanfaas.runtime.context import Context, function_logger

if TYPE_CHECKING:  # asyncio and concurrent.futures load only for async handlers:
    import asyncio  # they add ~90 memory mappings to every template (fork cost)
    import concurrent.futures

_decoder = msgspec.msgpack.Decoder(p.InstanceRequest)
_json_decode = msgspec.json.decode


def _enc_hook(obj: Any) -> Any:
    """What msgspec cannot encode by itself: subclasses of str, int and float
    (dict, list and tuple subclasses it encodes) become their value, read with
    the base type's own method so an overridden ``__str__`` does not change it."""
    if isinstance(obj, str):
        return str.__str__(obj)
    if isinstance(obj, int):
        return int.__int__(obj)
    if isinstance(obj, float):
        return float.__float__(obj)
    raise TypeError(f"Encoding objects of type {type(obj).__qualname__} is unsupported")


_json_encoder = msgspec.json.Encoder(enc_hook=_enc_hook)
_LOG_LIMIT = 1024 * 1024
_LOG_HEAD = 256 * 1024
"""Of a call's logs over ``_LOG_LIMIT`` bytes, the first ``_LOG_HEAD`` and the last
``_LOG_LIMIT - _LOG_HEAD`` are kept: where it started, and where it ended (its error)."""
# Results no handler awaits.  Asking inspect.isawaitable() of one runs the ABC
# machinery of collections.abc (its cache of the type, and on a miss the
# Python of _collections_abc): in a fresh strict child that took 10-16
# copy-on-write faults, ~50 µs, on the request path.
_PLAIN = frozenset({type(None), bool, int, float, str, bytes, bytearray, memoryview, list, tuple, dict})


_forked_copy = False
"""Set in a process the handler forked (``os.fork()`` without exec): a copy of
the instance, which must never come back into the platform's code."""


def guard_forks(template_pid: int) -> None:
    """Mark every process an instance's handler forks (``guard_forks`` runs once in
    the template, before its first instance).

    Such a process is a copy of the instance, on its socket and its log memfd:
    back in the platform's code it would answer for the instance, read its next
    requests and truncate its logs.  Marked, it exits as soon as its handler
    call returns or raises (``_end_forked_copy``): one check of a module global
    per call.  The hook runs only in children forked with ``os.fork()``: not in
    instances forked with libc's ``fork()`` (``runtime/forking.py``), and in one
    the template forked with ``os.fork()`` it marks nothing."""

    def after_fork_in_child() -> None:
        global _forked_copy
        if os.getppid() != template_pid:  # forked by an instance, not by the template
            _forked_copy = True

    os.register_at_fork(after_in_child=after_fork_in_child)


def _end_forked_copy(exc: BaseException | None) -> NoReturn:
    """A process the handler forked came back from its handler call: exit at once,
    as the interpreter would end it there (an exception's traceback on stderr and
    status 1; ``sys.exit()``'s status), without answering for the instance."""
    code = 0 if exc is None else _exit_status(exc) if isinstance(exc, SystemExit) else 1
    try:
        if isinstance(exc, SystemExit):
            if exc.code is not None and not isinstance(exc.code, int):
                print(exc.code, file=sys.stderr)
        elif exc is not None:
            sys.stderr.write(user_traceback(exc))  # as the interpreter prints it, from the user's code on
    except Exception:
        pass  # no stderr left to print to: the status says it
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass  # the handler closed or replaced it
    os._exit(code & 0xFF)


def open_streams() -> tuple[TextIO, TextIO]:
    """Line-buffered text streams on fds 1 and 2, so prints interleave in order.

    A template opens them once, before it forks: a fresh child then finds
    them ready and unused instead of building its own (~40 copy-on-write
    faults, 50 us)."""
    return (
        open(1, "w", buffering=1, closefd=False, encoding="utf-8", errors="replace"),
        open(2, "w", buffering=1, closefd=False, encoding="utf-8", errors="replace"),
    )


class Capture:
    """Per-invocation stdout/stderr: fds 1 and 2 point at a memfd (``fd``: the
    template's, which the runtime holds too; else a new one)."""

    def __init__(self, streams: tuple[TextIO, TextIO] | None = None, fd: int = -1) -> None:
        self.fd = fd if fd >= 0 else os.memfd_create("spanfaas-logs", os.MFD_CLOEXEC)
        os.dup2(self.fd, 1)
        os.dup2(self.fd, 2)
        sys.stdout, sys.stderr = streams or open_streams()

    @classmethod
    def on(cls, fd: int) -> Capture:
        """A capture on ``fd`` whose process points fds 1 and 2 (and ``sys.stdout``,
        ``sys.stderr``) at it itself: made in a template before the fork, it is one
        object less for the instance to make (``template._instance_main``)."""
        capture = cls.__new__(cls)
        capture.fd = fd
        return capture

    def restore_fds(self) -> None:
        """Point fds 1 and 2 at the memfd again (reuse, after each call): a handler
        that closed or redirected them must not leave the next calls of the
        instance uncaptured or failing to print.  Two cheap syscalls."""
        os.dup2(self.fd, 1)
        os.dup2(self.fd, 2)

    def take(self) -> str:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                # The handler closed or replaced the stream (None, an object without
                # flush()): what reached the fd still counts, and the answer stands.
                pass
        # The memfd's own fd, not fd 1: the handler may have closed fd 1 or pointed
        # it elsewhere (both share the memfd's offset while they are dups).
        size = os.lseek(self.fd, 0, os.SEEK_CUR)
        if size == 0:
            return ""
        text = _read_logs(self.fd, size)
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        return text


def _read_logs(fd: int, size: int) -> str:
    """The ``size`` bytes of logs in ``fd``; past ``_LOG_LIMIT``, their head and their tail
    (cut between characters), with how many bytes were left out between them."""
    if size <= _LOG_LIMIT:
        return os.pread(fd, size, 0).decode("utf-8", "replace")
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    head = decoder.decode(os.pread(fd, _LOG_HEAD, 0))  # holds back a character cut at its end
    head_size = _LOG_HEAD - len(decoder.getstate()[0])
    tail = os.pread(fd, _LOG_LIMIT - _LOG_HEAD, size - (_LOG_LIMIT - _LOG_HEAD))
    skip = 0
    while skip < 3 and skip < len(tail) and tail[skip] & 0xC0 == 0x80:  # the rest of a character cut at its start
        skip += 1
    left_out = size - head_size - (len(tail) - skip)
    return (
        f"{head}\n[spanfaas: {left_out} bytes of {size} left out here (the first {_LOG_HEAD // 1024} KiB and "
        f"the last {(_LOG_LIMIT - _LOG_HEAD) // 1024} KiB are kept)]\n{tail[skip:].decode('utf-8', 'replace')}"
    )


def logs_so_far(capture: int) -> str:
    """What the call running on an instance has printed until now (or until the
    instance died), read from outside: by the runtime, which holds each
    instance's capture memfd (``capture``, sent with its socket), when the call
    ran past its timeout or the instance crashed or was OOM-killed, so those
    logs are not lost with it.  Its own fd, not fds 1 and 2: what was printed
    before the handler pointed them elsewhere counts too."""
    try:
        size = os.fstat(capture).st_size
        return _read_logs(capture, size) if size else ""
    except OSError:
        return ""


def _machinery() -> tuple[str, str]:
    """The dirs of the spanfaas package (its frames are the platform's, not the function's)
    and of the stdlib, as code objects name them now: a sandboxed zygote renames them
    (``sandbox/runtimepaths.py``) after this module is imported."""
    platform = os.path.dirname(os.path.dirname(_machinery.__code__.co_filename)) + os.sep
    return platform, os.path.dirname(traceback.format_exception.__code__.co_filename) + os.sep


_code_root = ""
"""The function's bundle dir (``show_paths_from``), as frame lines name it: ``File "<dir>/``."""


def show_paths_from(bundle_dir: str) -> None:
    """Name the function's own files in tracebacks by their path in its bundle
    (``handler.py``, ``lib/util.py``), not where the platform unpacked it: that
    path is the platform's, and says nothing to the user.  Frame lines only (an
    exception group's are indented and prefixed by ``|``): a message or a source
    line that quotes the path stays as it is.  (Plain string work, at error time:
    a regex compiled here would un-share ~0.4 MiB in every template.)"""
    global _code_root
    _code_root = 'File "' + bundle_dir.rstrip(os.sep) + os.sep


def _bundle_relative(text: str) -> str:
    root = _code_root
    lines = text.split("\n")
    for i, line in enumerate(lines):
        body = line.lstrip(" |")
        if body.startswith(root):
            lines[i] = line[: len(line) - len(body)] + 'File "' + body[len(root) :]
    return "\n".join(lines)


def user_traceback(exc: BaseException) -> str:
    """``exc`` formatted from the first frame of the function's own code: the platform's
    frames before it (and those of asyncio or importlib it ran the code through) are
    left out, since they are not what the user fixes.  All of them when there is no
    frame of the function's code (the platform failed), but for a syntax error in one of
    its files: compiled by the platform's loader, it has no frame of the code, and its
    own lines (the file, the line, the caret) are all the user fixes."""
    tb = exc.__traceback__
    platform, stdlib = _machinery()
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith((platform, stdlib, "<frozen ")):
        tb = tb.tb_next
    if tb is None and isinstance(exc, SyntaxError) and _code_root and f'File "{exc.filename}'.startswith(_code_root):
        text = "".join(traceback.format_exception_only(type(exc), exc))
    else:
        text = "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))
    return _bundle_relative(text) if _code_root else text


def _error(exc: BaseException) -> ErrorInfo:
    """The handler's exception as its error: any ``BaseException``, ``sys.exit()``
    included (its ``exit_status`` is the status the interpreter would exit with)."""
    kind: Literal["oom", "error"] = "oom" if isinstance(exc, MemoryError) else "error"
    typ = type(exc)
    name = typ.__qualname__ if typ.__module__ in ("builtins", "__main__") else f"{typ.__module__}.{typ.__qualname__}"
    try:
        message = str(exc)
    except Exception:  # its __str__ raised: still the handler's error, not a crash of the instance
        message = f"<{name}: str() of the exception failed>"
    try:
        tb = user_traceback(exc)
    except Exception:
        tb = ""
    status = _exit_status(exc) if isinstance(exc, SystemExit) else None
    return ErrorInfo(
        kind=kind, type=_utf8(name), message=_utf8(_clip(message, "message")), traceback=_utf8(_clip(tb, "traceback")),
        exit_status=status,
    )  # fmt: skip


def _utf8(text: str) -> str:
    """``text`` as UTF-8 can carry it: a lone surrogate (a file name decoded with
    surrogateescape, in an exception's message) as ``\\udcxx``.  Encoding the error
    would fail otherwise, and the instance with it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _clip(text: str, what: str) -> str:
    """At most ``_LOG_LIMIT`` characters of an error's message or traceback, as for
    logs: a huge message (and the traceback that repeats it) must not carry past the
    result limit what a result may not.  Its head and its tail stay, as a call's logs'
    do: a traceback's first frames, and its last (the most recent, and the message)."""

    def marker(left_out: int) -> str:
        return f"\n[spanfaas: {left_out} characters of this {what}'s {len(text)} left out here]\n"

    return keep_ends(text, _LOG_LIMIT, marker)


def _exit_status(exc: SystemExit) -> int:
    """The status the interpreter exits with on ``exc``: its code, 0 for none, 1 for a message."""
    code = exc.code
    return 0 if code is None else int(code) if isinstance(code, int) else 1


def _out_of_memory_in(what: str) -> ErrorInfo:
    """A MemoryError in the platform's code on the function's behalf (decoding its event,
    encoding its result), in the function's memory: its error, told without a traceback
    (the platform's frames, with their paths, say nothing the user can fix)."""
    return ErrorInfo(kind="oom", type="MemoryError", message=what)


class _NoRoom(Exception):
    """Out of memory in the platform's code on the function's behalf (``_out_of_memory_in``)."""

    def __init__(self, error: ErrorInfo) -> None:
        self.error = error


def _too_large(size: int, limit: int) -> ErrorInfo:
    have, allowed = format_sizes(size, limit)
    return ErrorInfo(
        kind="error",
        type="ResultTooLarge",
        message=(
            f"the result is {have}; the limit is runtime.max_payload = {allowed} (return less, or store the "
            "data elsewhere, a volume or an object store, and return where it is; an operator raises the limit "
            "with max_payload in the [runtime] table of the config file (SPANFAAS_CONFIG))"
        ),
    )


def non_finite_at(value: Any) -> str | None:
    """Where ``value`` holds a float JSON cannot represent (NaN, ±Infinity), as
    ``result['key'][1] is nan``; None if it holds none.  msgspec writes them as
    null, which would change the data without a word: call it when the encoded
    result has a null (so a result without one costs nothing more)."""
    if not _has_non_finite(value):  # (no paths built: ~10x faster, the usual answer)
        return None
    stack: list[tuple[Any, str]] = [(value, "result")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, float):
            if item != item or item in (_INF, -_INF):
                return f"{path} is {float.__repr__(item)}"
        elif isinstance(item, dict):
            stack.extend((v, f"{path}[{k!r}]") for k, v in reversed(item.items()))
        elif isinstance(item, (list, tuple)):
            stack.extend((v, f"{path}[{i}]") for i, v in reversed(list(enumerate(item))))
    return None


_INF = float("inf")


_msgpack_encoder = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
_NON_FINITE_BITS = re.compile(rb"\xcb[\x7f\xff][\xf0-\xff]")
"""A msgpack float64 (msgspec writes every float so) whose exponent is all ones: NaN or ±Infinity."""


def _has_non_finite(value: Any) -> bool:
    """Whether ``value`` may hold NaN or ±Infinity: its msgpack (in C, ~20x faster than
    walking it in Python) has no such float, or the walk decides (a string or bytes
    that hold those bits cost only that walk)."""
    try:
        return _NON_FINITE_BITS.search(_msgpack_encoder.encode(value)) is not None
    except (TypeError, ValueError, msgspec.EncodeError, OverflowError):
        return True


def non_finite_error(where: str) -> ErrorInfo:
    return ErrorInfo(
        kind="error",
        type="ValueError",
        message=(
            f"the handler's return value is not JSON-representable: {where}, and JSON has no NaN or Infinity "
            "(it would arrive as null); return None, a string such as 'NaN', or a finite number in its place"
        ),
    )


def _encode_output(value: Any) -> tuple[bytes | memoryview, str]:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return (value if isinstance(value, (bytes, memoryview)) else memoryview(value)), "application/octet-stream"
    # Into a bytearray, not encode(): when growing its buffer fails (an answer
    # past the memory limit), encode() crashes the process with SIGSEGV, while a
    # bytearray that cannot grow raises MemoryError (msgspec 0.23).  ~0.15 µs more.
    out = bytearray()
    try:
        _json_encoder.encode_into(value, out)
    except UnicodeEncodeError as exc:  # a str with a lone surrogate: bytes decoded with surrogateescape
        raise msgspec.EncodeError(_unencodable(exc)) from None
    if b"null" in out and value is not None and (where := non_finite_at(value)) is not None:  # (None: the common null)
        raise _NonFinite(where)
    return memoryview(out), "application/json"


def _unencodable(exc: UnicodeEncodeError) -> str:
    """What in a result UTF-8 cannot encode (a lone surrogate, as ``os.listdir`` or a
    ``surrogateescape`` decode leaves for undecodable bytes), and what to return instead."""
    text = exc.object if isinstance(exc.object, str) else ""
    bad = text[exc.start : exc.end]
    shown = repr(text) if len(text) <= 60 else f"{text[max(0, exc.start - 20) : exc.end + 20]!r} (within a longer str)"
    return (f"the str {shown} holds a lone surrogate ({bad!r}), which UTF-8 cannot encode: decode such bytes with "
            "errors='replace', or return the raw bytes (os.fsencode)")  # fmt: skip


class _NonFinite(ValueError):
    """A result holding NaN or ±Infinity (``non_finite_at`` says where)."""


def _is_coroutine_function(fn: Callable[..., Any]) -> bool:
    """``inspect.iscoroutinefunction``, without running inspect's Python for a
    plain function (in a fresh template that would un-share ~100 KiB)."""
    code = getattr(fn, "__code__", None)
    if type(fn) is types.FunctionType and code is not None:
        return bool(code.co_flags & inspect.CO_COROUTINE)
    return inspect.iscoroutinefunction(fn)


class Runner:
    """Calls the handler; one per instance."""

    def __init__(self, handler: Callable[..., Any], function_name: str, *, max_result: int = 0) -> None:
        self.handler = handler
        self.function_name = function_name
        self.max_result = max_result or sys.maxsize
        """Bytes a result may have (``runtime.max_payload``): a larger one is the handler's error."""
        self.is_async = _is_coroutine_function(handler)
        self.logger = function_logger(function_name)  # (named once, by the template: every instance's calls share it)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._loop_lock: threading.Lock | None = None
        """Set when calls run in worker threads (serve_concurrent): their awaitables go to one loop thread."""

    def _await(self, awaitable: Any) -> Any:
        lock = self._loop_lock
        if lock is not None and self._loop_thread is None:
            # A sync handler returned an awaitable in a worker thread: one loop
            # cannot run_until_complete() in several threads at once.
            with lock:
                if self._loop_thread is None:
                    self.start_loop_thread()
        if self._loop_thread is not None:
            return self._await_on_loop_thread(awaitable)
        if self._loop is None:
            import asyncio

            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(awaitable)

    def _await_on_loop_thread(self, awaitable: Any) -> Any:
        """Concurrent instance: one loop in its own thread runs every invocation's
        coroutine, as a task carrying the calling thread's context (its log buffer)."""
        import concurrent.futures

        assert self._loop is not None
        loop = self._loop
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        ctx = contextvars.copy_context()

        async def run() -> Any:
            try:
                result = await awaitable
            except BaseException as exc:
                if _forked_copy:  # the handler forked on this thread: its copy ends here
                    _end_forked_copy(exc)
                if not isinstance(exc, (SystemExit, KeyboardInterrupt)):
                    raise
                # Out of the task, they would stop the shared loop and strand every
                # caller: the calling thread gets them, as the handler's error.
                done.set_exception(exc)
                return None
            if _forked_copy:
                _end_forked_copy(None)
            return result

        def settle(task: asyncio.Task[Any]) -> None:
            if done.done():  # run() handed its caller the exception
                return
            if task.cancelled():
                done.set_exception(concurrent.futures.CancelledError())
                return
            exc = task.exception()
            if exc is not None:
                done.set_exception(exc)
            else:
                done.set_result(task.result())

        loop.call_soon_threadsafe(lambda: loop.create_task(run(), context=ctx).add_done_callback(settle))
        return done.result()

    def concurrent(self) -> None:
        """Calls will run in worker threads: an awaitable a sync handler returns
        goes to the loop thread (started on first need), not to a loop per call."""
        self._loop_lock = threading.Lock()

    def start_loop_thread(self) -> None:
        import asyncio

        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="spanfaas-async", daemon=True)
        self._loop_thread.start()

    def call(self, req: p.Invoke, body: memoryview) -> tuple[p.Done, bytes | memoryview]:
        start = time.perf_counter()
        ctx = Context(req.invocation_id, self.function_name, req.deadline, req.event, self.logger)
        output: bytes | memoryview = b""
        content_type = "application/json"
        error: ErrorInfo | None = None
        try:
            if is_json_type(req.content_type):
                try:
                    event: Any = _json_decode(body) if len(body) else None
                except MemoryError:  # in the platform's decoder: no frame of it is the user's to show
                    raise _NoRoom(_out_of_memory_in("the event did not fit in memory while it was decoded from JSON "
                                                    "(send less, or send it as bytes: not JSON)")) from None  # fmt: skip
            else:
                event = bytes(body)
            result = self.handler(event, ctx)
            if type(result) not in _PLAIN and inspect.isawaitable(result):
                result = self._await(result)
            if _forked_copy:  # a process the handler forked, back here (see guard_forks)
                _end_forked_copy(None)
            try:
                output, content_type = _encode_output(result)
            except _NonFinite as exc:
                error = non_finite_error(str(exc))
            except (TypeError, msgspec.EncodeError) as exc:
                error = ErrorInfo(
                    kind="error",
                    type="TypeError",
                    message=f"the handler's return value is not JSON-serializable ({exc}); return bytes, str, numbers, lists or dicts",
                )
            except MemoryError:  # in the platform's encoder: no frame of it is the user's to show
                error = _out_of_memory_in("the handler's return value did not fit in memory while it was encoded as JSON "
                                          "(return less, or bytes: not encoded)")  # fmt: skip
            if len(output) > self.max_result:  # never sent: the caller could not take it
                error, output = _too_large(len(output), self.max_result), b""
        except _NoRoom as exc:
            error = exc.error
        except BaseException as exc:  # the user's error, reported with its traceback (sys.exit() too)
            if _forked_copy:
                _end_forked_copy(exc)
            error = _error(exc)
        duration = (time.perf_counter() - start) * 1000
        return p.Done(id=req.id, content_type=content_type, error=error, duration_ms=duration), output


    def warm(self, reader: p.FrameReader | None = None) -> None:
        """Run the request path once on a dummy, without the user's handler.

        In a fresh child this takes the copy-on-write faults and first-use
        costs (decoders, logger, capture) before the child blocks, so they
        are not paid on the request path.  With the child's ``reader``, the
        dummy request is read through it (from its buffer, not the socket).
        The handler's own objects (function, code, globals), which its call
        writes refcounts to, are touched too.
        """
        handler, is_async = self.handler, self.is_async
        self.handler, self.is_async = _warm_handler, False
        try:
            wire = _warm_request()
            if reader is not None:
                reader.prime(wire)
                frame = reader.read()
                assert frame is not None
                req, body = frame
            else:
                hlen, _ = p.FRAME.unpack_from(wire)
                req = _decoder.decode(memoryview(wire)[p.FRAME.size : p.FRAME.size + hlen])
                body = memoryview(wire)[p.FRAME.size + hlen :]
            done, out = self.call(req, body)
            p.encode(msgspec.structs.replace(done, logs=""), out)
        finally:
            self.handler, self.is_async = handler, is_async
        _touch(handler)


def _warm_handler(event: Any, ctx: Context) -> Any:
    return {"warm": [1, "x", None]}


def _warm_request() -> bytes:
    req = p.Invoke(id=0, invocation_id="warm", content_type="application/json", deadline=time.time() + 1)
    return b"".join(bytes(x) for x in p.encode(req, b'{"warm": [1, "x", 2.5]}'))


def rehearse(runner: Runner, passes: int) -> None:
    """In a strict template, before its instances inherit it: a strict instance's whole
    path after its set-up (hello, ``serve_one``: wait, read, decode, call, logs, answer),
    ``passes`` times, on a socketpair and a log memfd of its own and with ``warm``'s
    dummy handler.  Code run only in instances would be quickened and specialized anew
    in each (the interpreter writing its counters into the code objects), and its type
    lookups cached anew (writing the interpreter's method cache, and the refcounts of
    the names in it): each a page copied in every instance.  Run here, they are read."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    logs = os.memfd_create("spanfaas-rehearsal", os.MFD_CLOEXEC)
    readable = select.poll()
    readable.register(theirs.fileno(), select.POLLIN)
    capture = Capture.on(logs)  # (its fds 1 and 2 are the template's: left as they are)
    hello = b"".join(p.encode(p.Hello(0)))
    wire = _warm_request()
    answers = msgspec.msgpack.Decoder()
    handler, is_async = runner.handler, runner.is_async
    runner.handler, runner.is_async = _warm_handler, False
    try:
        for i in range(passes):
            theirs.send(hello)
            ours.sendall(wire)
            if i % 2:
                os.write(logs, b"rehearsal\n")  # the path of a call that printed, too
            serve_one(theirs, runner, capture, readable)
            ours.recv(len(hello))
            if p.recv_frame(ours, answers) is None:
                raise OSError("the rehearsal's answer did not come")
    finally:
        runner.handler, runner.is_async = handler, is_async
        ours.close()
        theirs.close()
        os.close(logs)


def _touch(fn: Any) -> None:
    """Write the refcounts a call of ``fn`` writes first (its function, code,
    globals and builtins), so a fresh child takes those copy-on-write faults
    now instead of on the request path."""
    code = getattr(fn, "__code__", None)
    if code is not None:  # a plain function (not a callable object)
        refs = [fn, code, code.co_consts, code.co_names, getattr(fn, "__globals__", None), getattr(fn, "__builtins__", None)]
        refs.clear()


def frame_reader(sock: socket.socket) -> p.FrameReader:
    """A reuse instance's reader of requests on ``sock`` (a strict one reads its
    one request with ``read_one``)."""
    return p.FrameReader(sock, _decoder)


_ONE_SHOT_CHUNK = 64 * 1024
_request_buffer = bytearray(_ONE_SHOT_CHUNK)
"""Where a strict instance reads its request into, when it fits: made once (in the zygote),
shared by every instance until it writes it (a page copied for a small request).  A buffer
of its own would be 64 KiB from malloc's heap, shrunk to the request after: a write at
each end and to malloc's state, ~6 pages copied in a fresh instance."""


def read_one(sock: socket.socket, readable: select.poll | None = None) -> tuple[p.Invoke, memoryview] | None:
    """A strict instance's request: one ``recv_into`` for one that fits 64 KiB
    (into ``_request_buffer``; a larger one into a buffer of its size).  None at EOF.

    ``readable``: ``sock`` registered for POLLIN, to wait in: a task blocked in
    ``recv`` on a Unix socket is also woken when the peer *reads* (the hello),
    a spurious context switch; ``poll`` wakes only for data."""
    if readable is not None:
        readable.poll()
    buf = _request_buffer
    have = sock.recv_into(buf)
    if not have:
        return None
    fs = p.FRAME.size
    while have < fs:
        more = sock.recv_into(memoryview(buf)[have:])
        if not more:
            return None
        have += more
    hlen, blen = p.FRAME.unpack_from(buf)
    total = fs + hlen + blen
    if have < total:  # a large request: the rest straight into a buffer of its size
        large = bytearray(total)
        large[:have] = memoryview(buf)[:have]
        view = memoryview(large)
        while have < total:
            n = sock.recv_into(view[have:])
            if n == 0:
                return None
            have += n
        buf = large
    view = memoryview(buf)
    return _decoder.decode(view[fs : fs + hlen]), view[fs + hlen : total]


def serve_one(
    sock: socket.socket, runner: Runner, capture: Capture, readable: select.poll | None = None, clear: Callable[[], None] | None = None
) -> None:
    """strict isolation: serve one invocation on ``sock`` (none at EOF).  ``clear``: run as
    the call starts, before the handler (without Landlock: ``template._empty_own``)."""
    frame = read_one(sock, readable)
    if frame is None:
        return
    if clear is not None:
        clear()
    req, body = frame
    done, output = runner.call(req, body)
    del body, frame
    logs = capture.take()
    if logs:
        done = msgspec.structs.replace(done, logs=logs)
    p.send_frame(sock, done, output)
    # The reply woke the runtime with a "sync" wake-up, which the kernel
    # may answer by queueing it on this CPU, expecting us to block now.
    # We exit instead, and tearing down the address space takes
    # 0.3-0.7 ms: make way first (p90 of a paced call 0.9 to 0.3 ms).
    os.sched_yield()


def serve(sock: socket.socket, runner: Runner, *, capture: Capture | None = None, reader: p.FrameReader | None = None) -> None:
    """reuse isolation: serve invocations on ``sock`` until EOF (strict: ``serve_one``).

    ``reader``: made (and warmed) before the instance said hello, so its
    first use is off the request path."""
    capture = capture or Capture()
    reader = reader or frame_reader(sock)
    while True:
        frame = reader.read()
        if frame is None:
            return
        req, body = frame
        done, output = runner.call(req, body)
        del body, frame
        logs = capture.take()
        if logs:
            done = msgspec.structs.replace(done, logs=logs)
        # Each answer goes out at once, even with more requests pipelined behind
        # it: held for a batch, it would wait on the next call, which may hang.
        p.send_frame(sock, done, output)
        capture.restore_fds()  # after the answer went out: off the caller's path


_log_buffer: contextvars.ContextVar[io.StringIO | None] = contextvars.ContextVar("spanfaas_log_buffer", default=None)


class _ContextStreams(io.TextIOBase):
    """``sys.stdout``/``sys.stderr`` for concurrent instances: each invocation
    (its thread, or its task) writes into its own buffer; anything else falls
    through to the fd."""

    def __init__(self, fallback: Any) -> None:
        self._fallback = fallback

    def write(self, s: str) -> int:
        buf = _log_buffer.get()
        return (buf if buf is not None else self._fallback).write(s)

    def flush(self) -> None:
        self._fallback.flush()


def serve_concurrent(sock: socket.socket, runner: Runner, slots: int, capture: Capture) -> None:
    """reuse isolation with ``concurrency > 1``: up to ``slots`` invocations at once.

    Sync handlers run in a thread pool, async handlers as tasks on one loop.
    Logs are per invocation for what Python code prints or logs; output
    written straight to fds 1 and 2 (C code, subprocesses) is shared.
    """
    from concurrent.futures import ThreadPoolExecutor

    runner.concurrent()
    if runner.is_async:
        runner.start_loop_thread()
    sys.stdout = _ContextStreams(sys.stdout)
    sys.stderr = _ContextStreams(sys.stderr)
    send_lock = threading.Lock()

    def handle(req: p.Invoke, body: bytes) -> None:
        buf = io.StringIO()
        token = _log_buffer.set(buf)
        try:
            done, output = runner.call(req, memoryview(body))
        except BaseException:
            # The platform failed (the handler's own exceptions are its error): end
            # the instance, so the runtime sees it crash instead of waiting for the timeout.
            traceback.print_exc()
            os._exit(70)
        finally:
            _log_buffer.reset(token)
        logs = buf.getvalue()
        if logs:
            done = msgspec.structs.replace(done, logs=logs)
        with send_lock:
            p.send_frame(sock, done, output)

    reader = p.FrameReader(sock, _decoder)
    with ThreadPoolExecutor(max_workers=slots, thread_name_prefix="spanfaas-invoke") as workers:
        while True:
            frame = reader.read()
            if frame is None:
                return
            req, body = frame
            workers.submit(handle, req, bytes(body))
