"""Report liveness on stderr from a background thread every ``interval`` seconds.

Fixed: the thread waits on an event instead of sleeping, and an atexit handler sets the
event and joins the thread, so it never prints while the interpreter finalizes.
"""

import atexit
import sys
import threading


class Heartbeat:
    def __init__(self, interval=0.2):
        self._interval = interval
        self.beats = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()
        atexit.register(self.stop)

    def stop(self):
        self._stop.set()
        self._thread.join()

    def _run(self):
        while not self._stop.wait(self._interval):
            self.beats += 1
            print(f"heartbeat {self.beats}: ok", file=sys.stderr, flush=True)
