"""The side channel between a child and its parent: JSON lines on an inherited pipe.

A pipe survives the child's crash (the parent still reads what was written) and is not
stdout, which the test owns.  Every record carries the writer's pid, so records from a
process the test forked are told apart and ignored.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, List

#: Characters kept from each end of a long string in a record.  A test's reports carry the
#: output pytest captured in the child: a test that prints hundreds of MB must not make
#: the parent read and hold them all.
KEEP_CHARS = 64 * 1024


def _bounded(value: Any) -> Any:
    """``value`` with every string longer than 2 * KEEP_CHARS cut to its head and tail."""
    if isinstance(value, str):
        if len(value) <= 2 * KEEP_CHARS:
            return value
        dropped = len(value) - 2 * KEEP_CHARS
        return (
            value[:KEEP_CHARS]
            + f"\n[... {dropped} characters left out by pytest-daemonexit ...]\n"
            + value[-KEEP_CHARS:]
        )
    if isinstance(value, dict):
        return {key: _bounded(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_bounded(item) for item in value]
    return value


def encode(event: str, **fields: Any) -> bytes:
    record = {"event": event, "pid": os.getpid(), **_bounded(fields)}
    return (json.dumps(record, default=repr, ensure_ascii=True) + "\n").encode("ascii")


class Writer:
    """Child side.  Writes whole records; a full pipe blocks until the parent reads."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, event: str, **fields: Any) -> None:
        data = encode(event, **fields)
        while data:
            try:
                written = os.write(self.fd, data)
            except OSError:
                return  # the parent went away: nothing left to report to
            data = data[written:]


#: Nesting our records never reach; deeper lines are garbage (a test wrote them to the
#: channel's descriptor), refused before the decoder recurses into them: on CPython 3.8
#: that recursion can take the C stack down with it instead of raising RecursionError.
MAX_DEPTH = 64
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def _too_deep(line: bytes) -> bool:
    if line.count(b"[") + line.count(b"{") <= MAX_DEPTH:
        return False  # the common case: cannot be nested that deep
    depth = 0
    for char in _JSON_STRING.sub(b'""', line).translate(None, _NOT_BRACKETS):
        depth += 1 if char in (0x5B, 0x7B) else -1
        if depth > MAX_DEPTH:
            return True
    return False


class Reader:
    """Parent side: feed bytes, get complete records back."""

    def __init__(self) -> None:
        self._partial: List[bytes] = []  # the pieces of a line not ended yet
        self.corrupt = 0

    def feed(self, data: bytes) -> List[Dict[str, Any]]:
        if b"\n" not in data:
            # Joined only once the line ends: joining on every read copies a long line
            # over and over (quadratic in its length).
            self._partial.append(data)
            return []
        lines = b"".join([*self._partial, data]).split(b"\n")
        self._partial = [lines.pop()]
        records = []
        for line in lines:
            if not line.strip():
                continue
            if _too_deep(line):
                self.corrupt += 1
                continue
            try:
                record = json.loads(line.decode("ascii", "replace"))
            except (ValueError, RecursionError):  # nested deeper than the decoder recurses
                self.corrupt += 1
                continue
            if isinstance(record, dict) and isinstance(record.get("event"), str):
                records.append(record)
            else:
                self.corrupt += 1
        return records
