"""Buffer log lines in memory; a background thread writes them to stdout as JSON lines
(for a log collector) every ``interval`` seconds, and once more at exit.

BUG: at exit ``close()`` waits at most ``exit_timeout`` for the last batch, "so that a slow
log destination never delays exit".  When the batch takes longer, the interpreter
finalizes while the daemon thread is still printing: it is frozen inside
``print(..., flush=True)`` holding the lock of ``sys.stdout``'s buffer, the final flush of
``sys.stdout`` waits 1 s for that lock and aborts: "Fatal Python error:
_enter_buffered_busy: could not acquire lock for <_io.BufferedWriter name='<stdout>'> at
interpreter shutdown, possibly due to daemon threads" (SIGABRT).  Needs a buffered
stdout: PYTHONUNBUFFERED=1 or ``-u`` hide it.  Fix: join without a timeout, or drop what
cannot be written in time instead of leaving a thread writing it.
"""

import atexit
import json
import threading
import time


class LogShipper:
    def __init__(self, interval=5.0, exit_timeout=0.1):
        self._interval = interval
        self._exit_timeout = exit_timeout
        self._pending = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="log-shipper", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    @property
    def pending(self):
        return len(self._pending)

    def log(self, line):
        with self._lock:
            self._pending.append((time.time(), line))

    def close(self):
        self._closing.set()
        self._thread.join(self._exit_timeout)  # may return while the thread still prints

    def _ship(self):
        with self._lock:
            lines, self._pending = self._pending, []
        for ts, line in lines:
            print(json.dumps({"ts": ts, "line": line}), flush=True)

    def _run(self):
        while not self._closing.wait(self._interval):
            self._ship()
        self._ship()
