"""Buffer log lines in memory; a background thread writes them to stdout as JSON lines
(for a log collector) every ``interval`` seconds, and once more at exit.

Fixed: ``close()`` joins the thread without a timeout, so the last batch is printed in
full before the interpreter finalizes.
"""

import atexit
import json
import threading
import time


class LogShipper:
    def __init__(self, interval=5.0):
        self._interval = interval
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
        self._thread.join()  # the last batch is out before the interpreter finalizes

    def _ship(self):
        with self._lock:
            lines, self._pending = self._pending, []
        for ts, line in lines:
            print(json.dumps({"ts": ts, "line": line}), flush=True)

    def _run(self):
        while not self._closing.wait(self._interval):
            self._ship()
        self._ship()
