"""Append records to a file in batches, one write per batch, from a background thread.

BUG: records accepted by ``write()`` wait in memory for the next batch.  The writer is a
daemon thread and nothing flushes at exit, so whatever arrived during the last
``interval`` is silently dropped when the interpreter stops the thread: no error, exit
status 0.  Only a look at the file after the process ended shows it (the test's
``check=``).  The fix is in ``batch_writer_fixed.py``.
"""

import threading


class BatchWriter:
    def __init__(self, path, interval=1.0):
        self._path = path
        self._pending = []
        self._lock = threading.Lock()
        self._interval = interval
        self._thread = threading.Thread(target=self._run, name="batch-writer", daemon=True)
        self._thread.start()

    def write(self, record):
        with self._lock:
            self._pending.append(record)

    def flush(self):
        with self._lock:
            batch, self._pending = self._pending, []
        if batch:
            with open(self._path, "a") as f:
                f.writelines(f"{record}\n" for record in batch)

    def _run(self):
        while True:
            threading.Event().wait(self._interval)
            self.flush()
