"""Track logged-in sessions; a background thread saves a snapshot to a file every
``interval`` seconds, and an atexit handler saves the last one and closes the file.

BUG: ``close()`` saves and closes the file but leaves the saver thread running.  Daemon
threads run until the runtime is marked finalizing, after every atexit handler: if the
saver wakes up in between, it writes to the closed file: "Exception in thread
session-saver ... ValueError: I/O operation on closed file", exit status 0.  With a 1 s
interval and a sub-millisecond window, a natural run almost never shows it.  The fix is
in ``session_tracker_fixed.py``.
"""

import atexit
import threading
import time


class SessionTracker:
    def __init__(self, path, interval=1.0):
        self._file = open(path, "w")  # noqa: SIM115 - open until close()
        self._sessions = set()
        self._lock = threading.Lock()
        self._interval = interval
        self._saver = threading.Thread(target=self._run, name="session-saver", daemon=True)
        self._saver.start()
        atexit.register(self.close)

    def login(self, user):
        with self._lock:
            self._sessions.add(user)

    def logout(self, user):
        with self._lock:
            self._sessions.discard(user)

    def save(self):
        with self._lock:
            self._file.seek(0)
            self._file.truncate()
            self._file.write("".join(f"{user}\n" for user in sorted(self._sessions)))
            self._file.flush()

    def close(self):
        self.save()
        self._file.close()  # BUG: the saver thread may still call save()

    def _run(self):
        while True:
            time.sleep(self._interval)
            self.save()
