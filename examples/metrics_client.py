"""Count metrics in memory; a background thread appends them to a file every ``interval``.

BUG: ``close()`` runs at exit (atexit) and wakes the daemon flusher thread for a last
flush, then closes the file without waiting for that thread (no ``join()``).  Daemon
threads keep running until the runtime is marked finalizing, after *all* atexit handlers,
so the last flush often hits the closed file: "Exception in thread metrics-flusher ...
ValueError: I/O operation on closed file", while the exit status stays 0.  Whether it does
depends on thread scheduling.  The fix is in ``metrics_client_fixed.py``.
"""

import atexit
import threading


class MetricsClient:
    def __init__(self, path, interval=0.01):
        self._file = open(path, "a")  # noqa: SIM115 - open until close()
        self._counts = {}
        self._lock = threading.Lock()
        self._interval = interval
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._run, name="metrics-flusher", daemon=True)
        self._flusher.start()
        atexit.register(self.close)

    def incr(self, name, value=1):
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + value

    def flush(self):
        with self._lock:
            counts, self._counts = self._counts, {}
            for name, value in counts.items():
                self._file.write(f"{name} {value}\n")
            self._file.flush()

    def close(self):
        self._stop.set()  # wakes the flusher up: it flushes one last time and ends
        self._file.close()  # BUG: without join(), this races with that last flush

    def _run(self):
        while not self._stop.wait(self._interval):
            self.flush()
        self.flush()
