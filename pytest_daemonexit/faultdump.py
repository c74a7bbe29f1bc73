"""Parse faulthandler's text (crash dumps, timeout dumps, signal dumps) into stacks."""

from __future__ import annotations

import dataclasses
import re
import sys
import sysconfig
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

_THREAD = re.compile(
    r"^(?P<current>Current thread|Thread) (?P<id>0x[0-9a-fA-F]+)"
    r"(?: \[(?P<name>[^\]]*)\])? \(most recent call first\):\s*$"
)
_STACK = re.compile(r"^Stack \(most recent call first\):\s*$")
_FRAME = re.compile(r'^\s+File "(?P<file>.*)", line (?P<line>\d+|\?\?\?) in (?P<func>.*?)\s*$')
_HEADER = re.compile(r"^(Fatal Python error: .*|Timeout \(\d+:\d\d:\d\d(\.\d+)?\)!)\s*$")


@dataclasses.dataclass(frozen=True)
class Frame:
    file: str
    line: Optional[int]
    function: str

    def __str__(self) -> str:
        line = "???" if self.line is None else str(self.line)
        return f'File "{self.file}", line {line} in {self.function}'


@dataclasses.dataclass(frozen=True)
class ThreadStack:
    thread_id: str
    current: bool
    frames: Tuple[Frame, ...]  # most recent call first
    name: Optional[str] = None
    truncated: bool = False


@dataclasses.dataclass(frozen=True)
class Dump:
    header: str  # "Fatal Python error: ...", "Timeout (0:00:02)!" or ""
    threads: Tuple[ThreadStack, ...]


def parse(text: str) -> List[Dump]:
    """Every faulthandler dump found in ``text``, in order.  Other lines are ignored."""
    dumps: List[Dump] = []
    header = ""
    threads: List[ThreadStack] = []
    cur: Optional[Dict[str, Any]] = None  # the thread being read

    def close_thread() -> None:
        nonlocal cur
        if cur is not None:
            threads.append(
                ThreadStack(
                    cur["id"], cur["current"], tuple(cur["frames"]), cur["name"], cur["trunc"]
                )
            )
            cur = None

    def close_dump() -> None:
        nonlocal header, threads
        close_thread()
        if threads:
            dumps.append(Dump(header, tuple(threads)))
        header, threads = "", []

    for raw in text.splitlines():
        line = raw.rstrip("\r")
        m = _THREAD.match(line)
        if m or _STACK.match(line):
            tid = m.group("id") if m else "0x0"
            close_thread()
            if any(t.thread_id == tid for t in threads):
                close_dump()  # the same thread again: a second dump without a header
            cur = {
                "id": tid,
                "current": bool(m and m.group("current") == "Current thread") or not m,
                "name": m.group("name") if m else None,
                "frames": [],
                "trunc": False,
            }
            continue
        h = _HEADER.match(line)
        if h:
            close_dump()
            header = h.group(1)
            continue
        if cur is None:
            continue
        f = _FRAME.match(line)
        if f:
            lineno = f.group("line")
            cur["frames"].append(
                Frame(f.group("file"), None if lineno == "???" else int(lineno), f.group("func"))
            )
        elif line.strip() == "...":
            cur["trunc"] = True
        elif line.strip() == "<no Python frame>":
            pass
        else:
            close_thread()
    close_dump()
    return dumps


def is_dump_line(line: str) -> bool:
    """A line that belongs to a faulthandler dump (shown separately, parsed)."""
    stripped = line.strip()
    return bool(
        _THREAD.match(line)
        or _STACK.match(line)
        or _FRAME.match(line)
        or stripped in ("<no Python frame>", "...")
        or stripped.startswith("Extension modules:")
    )


def _library_roots() -> Tuple[str, ...]:
    roots = set()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        try:
            roots.add(str(Path(sysconfig.get_paths()[key]).resolve()))
        except (KeyError, OSError):
            pass
    for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}:
        roots.add(str(Path(prefix, "lib").resolve()))
    roots.add(str(Path(__file__).resolve().parent))
    return tuple(sorted(roots))


_ROOTS = _library_roots()
_STDLIB = re.compile(r"[/\\]lib[/\\]python\d+\.\d+t?[/\\]")
_LIB_MARKERS = ("/site-packages/", "/dist-packages/", "/_pytest/", "/pluggy/", "<frozen ")


def is_user_frame(frame: Frame, roots: Iterable[str] = _ROOTS) -> bool:
    """True for a frame of the user's own code: not the stdlib, site-packages or us."""
    path = frame.file
    if path.startswith("<") or any(marker in path for marker in _LIB_MARKERS):
        return False
    if _STDLIB.search(path):  # any interpreter's standard library, not only ours
        return False
    return not any(path.startswith(root + "/") for root in roots)


def innermost_user_frame(stack: ThreadStack) -> Optional[Frame]:
    for frame in stack.frames:
        if is_user_frame(frame):
            return frame
    return None


def user_first(threads: Iterable[ThreadStack], main: Optional[str] = None) -> List[ThreadStack]:
    """Threads that run user code first; among those the main thread (in a hang it is the
    one waiting, e.g. an atexit handler joining a thread), then the current thread."""
    return sorted(
        threads,
        key=lambda t: (innermost_user_frame(t) is None, t.thread_id != main, not t.current),
    )


def format_stack(stack: ThreadStack, indent: str = "  ", main: Optional[str] = None) -> List[str]:
    """faulthandler-like text, user frames marked with ``>``."""
    kind = "Current thread" if stack.current else "Thread"
    name = f" [{stack.name}]" if stack.name else ""
    if main is not None and stack.thread_id == main:
        name += " (main thread)"
    lines = [f"{indent}{kind} {stack.thread_id}{name} (most recent call first):"]
    if not stack.frames:
        lines.append(f"{indent}    <no Python frame>")
    user = [is_user_frame(frame) for frame in stack.frames]
    last = len(stack.frames) - 1

    def shown(i: int) -> bool:
        # Innermost frames, user frames and their callers/callees, and the outermost.
        return i < 3 or i == last or any(user[max(0, i - 1) : i + 2])

    hidden = 0
    for i, frame in enumerate(stack.frames):
        if not shown(i):
            hidden += 1
            continue
        if hidden:
            lines.append(f"{indent}    ... {hidden} library frames")
            hidden = 0
        lines.append(f"{indent}  {'>' if user[i] else ' '} {frame}")
    if stack.truncated:
        lines.append(f"{indent}    ...")
    return lines
