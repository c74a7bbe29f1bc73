"""Append records to a file in batches, one write per batch, from a background thread.

Fixed: an atexit handler stops the thread, joins it and writes what is still pending.
"""

import atexit
import threading


class BatchWriter:
    def __init__(self, path, interval=1.0):
        self._path = path
        self._pending = []
        self._lock = threading.Lock()
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="batch-writer", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def write(self, record):
        with self._lock:
            self._pending.append(record)

    def flush(self):
        with self._lock:
            batch, self._pending = self._pending, []
        if batch:
            with open(self._path, "a") as f:
                f.writelines(f"{record}\n" for record in batch)

    def close(self):
        self._stop.set()
        self._thread.join()
        self.flush()

    def _run(self):
        while not self._stop.wait(self._interval):
            self.flush()
