"""Send events from a background thread; pending events are delivered at exit.

Fixed: ``close()`` puts a sentinel on the queue before joining, so the thread wakes up,
sees it and ends.
"""

import atexit
import queue
import threading

_STOP = object()


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
        self._queue.put(_STOP)  # wakes the thread up if it waits for an event
        self._thread.join()

    def _run(self):
        while self._running:
            event = self._queue.get()
            if event is _STOP:
                break
            self._send(event)
            self._queue.task_done()
