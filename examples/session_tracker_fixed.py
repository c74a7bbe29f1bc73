"""Track logged-in sessions; a background thread saves a snapshot to a file every
``interval`` seconds, and an atexit handler saves the last one and closes the file.

Fixed: ``close()`` stops the saver and joins it before the last save and the close.
"""

import atexit
import threading


class SessionTracker:
    def __init__(self, path, interval=1.0):
        self._file = open(path, "w")  # noqa: SIM115 - open until close()
        self._sessions = set()
        self._lock = threading.Lock()
        self._interval = interval
        self._stop = threading.Event()
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
        self._stop.set()
        self._saver.join()
        self.save()
        self._file.close()

    def _run(self):
        while not self._stop.wait(self._interval):
            self.save()
