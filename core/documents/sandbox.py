"""Parse untrusted files in a child process that has a memory cap and a time limit.

A hostile or broken file (a zip bomb, a PDF built to be slow, HTML nested a million levels deep)
can make a parser eat all memory, crash the interpreter or spin for hours. In the app's own
process that would take every user's session down with it; here the worst case is one killed
child and a message naming the file ("took longer than 60 s", "needed more than 1 GB of memory").

One child serves the whole process: starting Python and importing the parsers costs about a
second, while a round trip for a file once the child runs costs about a millisecond on a busy
two-core machine, ~1% of what ingesting a file costs (benchmarks/hostile_files_bench.py). It starts on first use, parses one file at a time, and is
replaced after anything it may not have survived cleanly (a timeout, running out of memory, a
crash). Limits come with each request, so callers with other settings share the same child:
  - memory: before each parse the child lowers its own RLIMIT_AS to what it uses now plus the
    limit, and raises it again afterwards; an allocation past it is a MemoryError in the child;
  - time: the parent waits for the answer at most `timeout_s`, then kills the child; the child
    also arms SIGALRM, so it cannot outlive a parent that died while it was parsing.

The protocol: length-prefixed frames on the child's stdin and stdout; a request is a JSON header
and the file's bytes, an answer is JSON (never pickle: the parent reads nothing it would execute).
The child moves its stdout out of the way first, so a library that prints cannot break a frame.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from core.documents.errors import IngestError
from core.documents.parsing import ParsedDocument, ParseLimits, Section, megabytes, parse_document

_HEADER = struct.Struct("!Q")  # the length of the frame that follows
_READY = b"ready\n"
_STARTUP_TIMEOUT_S = 120  # a loaded two-core machine may take several seconds to import the parsers
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # the folder holding `core`, for the child's sys.path


@dataclass(frozen=True)
class ParseStats:
    """How the last parse went, for benchmarks and tests: seconds in the sandbox, and the child's
    peak resident memory during that parse (None unless `measure_memory` was on, or when the child
    was killed before it could tell)."""

    filename: str
    seconds: float
    peak_rss_bytes: int | None
    refused: bool


class ParseSandbox:
    """A long-lived parser child; thread-safe (one parse at a time), restarted after failures."""

    def __init__(self) -> None:
        self._process: subprocess.Popen | None = None
        self._owner = os.getpid()
        self._lock = threading.Lock()
        self.last: ParseStats | None = None
        self.measure_memory = False  # each parse's own peak RSS (Linux; costs ~0.3 ms per file): tests, benchmarks

    def parse(
        self, filename: str, data: bytes, *, limits: ParseLimits, timeout_s: float, memory_mb: float
    ) -> ParsedDocument:
        """`parse_document` in the child; IngestError naming the file for a refusal of any kind."""
        with self._lock:
            started = time.perf_counter()
            try:
                process = self._running()
                started = time.perf_counter()
                answer = self._ask(process, filename, data, limits, timeout_s, memory_mb)
            except BaseException as error:  # a timeout, a dead child, or Streamlit stopping the script mid-request
                self._stop()
                self.last = ParseStats(filename, time.perf_counter() - started, None, True)
                if isinstance(error, _ChildFailed):
                    raise _refusal(filename, error.reason, timeout_s, memory_mb) from None
                raise
            if answer["status"] not in ("ok", "refused"):
                self._stop()  # after MemoryError, RecursionError or a bug, the next file gets a fresh child
            self.last = ParseStats(filename, time.perf_counter() - started, answer.get("peak_rss"), answer["status"] != "ok")
        if answer["status"] == "refused":
            raise IngestError(filename, answer["problem"], answer["advice"])
        if answer["status"] != "ok":
            raise _refusal(filename, answer["status"], timeout_s, memory_mb, answer.get("detail", ""))
        document = answer["document"]
        sections = [Section(**section) for section in document.pop("sections")]
        return ParsedDocument(sections=sections, **document)

    def close(self) -> None:
        with self._lock:
            self._stop()

    # --- the parent's side of the protocol ----------------------------------------------------

    def _ask(
        self, process: subprocess.Popen, filename: str, data: bytes, limits: ParseLimits, timeout_s: float, memory_mb: float
    ) -> dict:
        header = json.dumps(
            {"filename": filename, "limits": asdict(limits), "memory_bytes": int(memory_mb * 2**20), "alarm_s": timeout_s + 10,
             "measure": self.measure_memory}
        ).encode()
        deadline = time.monotonic() + timeout_s
        try:
            _write_all(process.stdin.fileno(), _HEADER.pack(len(header)) + header + _HEADER.pack(len(data)))
            _write_all(process.stdin.fileno(), data)
        except OSError as error:  # BrokenPipeError: the child died
            raise _ChildFailed(self._exit_reason(process)) from error
        size = _HEADER.unpack(self._read(process, _HEADER.size, deadline))[0]
        return json.loads(self._read(process, size, deadline))

    def _read(self, process: subprocess.Popen, size: int, deadline: float) -> bytes:
        """Exactly `size` bytes from the child, or _ChildFailed when it dies or the deadline passes."""
        fd, parts, left = process.stdout.fileno(), [], size
        while left:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise _ChildFailed("timeout")
            part = os.read(fd, min(left, 1 << 20))
            if not part:
                raise _ChildFailed(self._exit_reason(process))
            parts.append(part)
            left -= len(part)
        return b"".join(parts)

    def _running(self) -> subprocess.Popen:
        if self._owner != os.getpid():  # a forked copy of this object: the child belongs to the parent process
            self._process, self._owner = None, os.getpid()
        if self._process is None or self._process.poll() is not None:
            self._stop()
            environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_PACKAGE_ROOT, os.environ.get("PYTHONPATH")]))}
            self._process = subprocess.Popen(
                # -P: the current folder does not go first on sys.path, so `core` is always this one.
                [sys.executable, "-P", "-c", "from core.documents.sandbox import serve; serve()"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=environment,
                bufsize=0,
            )
            # Starting Python and importing the parsers is not the first file's time: wait for "ready".
            try:
                self._read(self._process, len(_READY), time.monotonic() + _STARTUP_TIMEOUT_S)
            except _ChildFailed:
                self._stop()
                raise RuntimeError("The document parser process did not start; see the log above.") from None
        return self._process

    def _exit_reason(self, process: subprocess.Popen) -> str:
        try:
            code = process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "crash"
        return "memory" if code == -signal.SIGKILL else "crash"  # the kernel's OOM killer sends SIGKILL

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        for stream in (process.stdin, process.stdout):
            try:
                stream.close()
            except OSError:
                pass
        if process.poll() is None:
            process.kill()
        process.wait()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _ChildFailed(Exception):
    def __init__(self, reason: str):
        self.reason = reason


def _refusal(filename: str, reason: str, timeout_s: float, memory_mb: float, detail: str = "") -> IngestError:
    """The message for a parse the sandbox had to stop."""
    if reason == "timeout":
        return IngestError(
            filename,
            f"took longer than {timeout_s:g} s to read, so reading it was stopped.",
            "The file may be damaged or built to be slow to read: open it in the application that made it, save or "
            "export a new copy, and upload that (or raise EXPERT_STUDIO_PARSE_TIMEOUT_S).",
        )
    if reason == "memory":
        return IngestError(
            filename,
            f"needed more than {megabytes(memory_mb)} of memory to read, so reading it was stopped.",
            "Split it into smaller files, or save a copy without large embedded objects "
            "(or raise EXPERT_STUDIO_PARSE_MEMORY_MB).",
        )
    if reason == "recursion":
        return IngestError(
            filename,
            "is nested too deeply to read (elements inside elements, thousands of levels down).",
            "Export it again from the application that made it, or save it as plain text.",
        )
    return IngestError(
        filename,
        "made the document reader fail" + (f" ({detail[:200]})" if detail else " (it stopped without an answer)") + ".",
        "The file may be damaged: open it in the application that made it, save a new copy, and upload that.",
    )


# --- the shared sandbox -----------------------------------------------------------------------

_shared = ParseSandbox()
atexit.register(_shared.close)


def shared_sandbox() -> ParseSandbox:
    """The process's parser child (its `last` stats describe the latest parse)."""
    return _shared


def parse_untrusted(filename: str, data: bytes, settings) -> ParsedDocument:
    """Parse a file from outside in the shared sandbox with the limits `settings` ask for."""
    return _shared.parse(
        filename,
        data,
        limits=ParseLimits.of(settings),
        timeout_s=settings.parse_timeout_s,
        memory_mb=settings.parse_memory_mb,
    )


# --- the child's side -------------------------------------------------------------------------


def serve() -> None:
    """The child's loop: read a request, parse, answer; return when the parent closes the pipe."""
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever a library prints goes to stderr, never into a frame
    sys.stdout = sys.stderr
    requests = sys.stdin.buffer
    _preload()
    answers.write(_READY)
    answers.flush()
    while True:
        header = _read_frame(requests)
        if header is None:
            return
        request = json.loads(header)
        data = _read_frame(requests) or b""
        answer = _answer(request, data)
        payload = json.dumps(answer, ensure_ascii=False).encode("utf-8", "replace")  # "replace": a stray surrogate
        answers.write(_HEADER.pack(len(payload)) + payload)
        answers.flush()
        if answer["status"] not in ("ok", "refused"):
            return  # the parent starts a fresh child for the next file


def _answer(request: dict, data: bytes) -> dict:
    alarm = getattr(signal, "alarm", lambda seconds: None)  # not on Windows
    alarm(int(request["alarm_s"]) + 1)  # a parent that died cannot kill us; this can
    if request["measure"]:
        _reset_peak_memory()
    restore = _limit_memory(request["memory_bytes"])
    try:
        parsed = parse_document(request["filename"], data, ParseLimits(**request["limits"]))
        answer = {"status": "ok", "document": asdict(parsed)}
    except IngestError as error:
        answer = {"status": "refused", "problem": error.problem, "advice": error.advice}
    except MemoryError:
        answer = {"status": "memory"}
    except RecursionError:
        answer = {"status": "recursion"}
    except Exception as error:  # a parser bug on odd input: the file is refused, the app goes on
        answer = {"status": "error", "detail": f"{type(error).__name__}: {error}"}
    finally:
        restore()
        alarm(0)
    answer["peak_rss"] = _peak_memory() if request["measure"] else None
    return answer


def _read_frame(stream) -> bytes | None:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    return stream.read(_HEADER.unpack(header)[0])


def _preload() -> None:
    """Import every parser's library once, so a file's parse time is its own."""
    import bs4  # noqa: F401
    import charset_normalizer  # noqa: F401
    import docx  # noqa: F401
    import lxml.etree  # noqa: F401
    import markdown_it  # noqa: F401
    import pypdf  # noqa: F401


def _limit_memory(extra_bytes: int):
    """Cap the address space at what the child maps now plus `extra_bytes`; returns the undo."""
    try:
        import resource
    except ImportError:  # not a Unix: the time limit still holds
        return lambda: None
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    mapped = _mapped_bytes()
    if mapped is None:
        return lambda: None
    cap = mapped + extra_bytes
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _mapped_bytes() -> int | None:
    """The child's virtual memory size (Linux /proc), or None where that is not available."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def _reset_peak_memory() -> None:
    """Linux: start the peak-RSS counter (VmHWM) afresh, so the peak reported is this parse's."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        pass


def _peak_memory() -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
    except ImportError:
        return None
