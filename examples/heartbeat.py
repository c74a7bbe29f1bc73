"""Report liveness on stderr from a background thread every ``interval`` seconds.

BUG: the daemon thread prints until the interpreter stops it at exit.  If it is stopped
inside ``print()``, holding the lock of ``sys.stderr``'s buffer, the interpreter's final
flush of ``sys.stderr`` waits 1 s for that lock and aborts: "Fatal Python error:
_enter_buffered_busy: could not acquire lock for <_io.BufferedWriter name='<stderr>'> at
interpreter shutdown, possibly due to daemon threads" (SIGABRT).  The window is the few
microseconds one print takes, once per interval: a natural run almost never hits it.
The fix is in ``heartbeat_fixed.py``.
"""

import sys
import threading
import time


class Heartbeat:
    def __init__(self, interval=0.2):
        self._interval = interval
        self.beats = 0
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()

    def _run(self):
        while True:
            time.sleep(self._interval)
            self.beats += 1
            print(f"heartbeat {self.beats}: ok", file=sys.stderr, flush=True)
