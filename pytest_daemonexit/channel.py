"""The side channel between a child and its parent: JSON lines on an inherited pipe.

A pipe survives the child's crash (the parent still reads what was written) and is not
stdout, which the test owns.  Every record carries the writer's pid, so records from a
process the test forked are told apart and ignored.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List


def encode(event: str, **fields: Any) -> bytes:
    record = {"event": event, "pid": os.getpid(), **fields}
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


class Reader:
    """Parent side: feed bytes, get complete records back."""

    def __init__(self) -> None:
        self._partial = b""
        self.corrupt = 0

    def feed(self, data: bytes) -> List[Dict[str, Any]]:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        records = []
        for line in lines:
            if not line.strip():
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
