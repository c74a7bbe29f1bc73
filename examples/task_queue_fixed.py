"""Run callables on a background worker thread, one at a time, in submission order.

Fixed: the worker is a daemon thread and an atexit handler stops it, so a caller that
forgets ``close()`` no longer keeps the process alive; what was submitted still runs.
"""

import atexit
import queue
import threading
from concurrent.futures import Future

_STOP = object()


class TaskQueue:
    def __init__(self):
        self._tasks = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="task-queue-worker", daemon=True)
        self._worker.start()
        atexit.register(self.close)

    def submit(self, fn, *args):
        future = Future()
        self._tasks.put((future, fn, args))
        return future

    def close(self):
        if self._worker.is_alive():
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
