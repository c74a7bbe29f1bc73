"""Send events from a background thread; pending events are delivered at exit.

BUG: ``close()`` (registered with atexit) clears ``_running`` and joins the sender thread,
but the thread only looks at the flag after ``queue.get()`` returns, and with an empty
queue ``get()`` never returns.  The atexit handler waits forever and so does the process.
Fix: wake the thread up with a sentinel (``self._queue.put(_STOP)``) before joining it.
"""

import atexit
import queue
import threading


class EventSender:
    def __init__(self, send):
        self._send = send
        self._queue = queue.Queue()
        self._running = True
        self._thread = threading.Thread(target=self._run, name="event-sender", daemon=True)
        self._thread.start()
        atexit.register(self.close)  # deliver what is still queued when the program ends

    def emit(self, event):
        self._queue.put(event)

    def flush(self):
        self._queue.join()

    def close(self):
        self._running = False
        self._thread.join()

    def _run(self):
        while self._running:
            event = self._queue.get()
            self._send(event)
            self._queue.task_done()
