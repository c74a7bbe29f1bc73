"""``metrics_client.py`` done right: ``close()`` stops the flusher and *joins* it before it
closes the file, so no flush can reach a closed file, at exit or elsewhere.
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
        if self._file.closed:
            return
        self._stop.set()
        self._flusher.join()  # the thread has done its last flush and ended
        self._file.close()

    def _run(self):
        while not self._stop.wait(self._interval):
            self.flush()
        self.flush()
