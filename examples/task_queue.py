"""Run callables on a background worker thread, one at a time, in submission order.

BUG: the worker is an ordinary (non-daemon) thread and only ``close()`` tells it to stop.
A caller that forgets ``close()`` leaves the worker blocked in ``queue.get()``, and at
interpreter exit ``threading._shutdown()`` joins every non-daemon thread before atexit
handlers run: the process never exits.  Fix: use the queue as a context manager.
"""

import queue
import threading
from concurrent.futures import Future

_STOP = object()


class TaskQueue:
    def __init__(self):
        self._tasks = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="task-queue-worker")
        self._worker.start()

    def submit(self, fn, *args):
        future = Future()
        self._tasks.put((future, fn, args))
        return future

    def close(self):
        self._tasks.put(_STOP)
        self._worker.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _run(self):
        while True:
            item = self._tasks.get()  # blocks forever once the work is done
            if item is _STOP:
                return
            future, fn, args = item
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)
