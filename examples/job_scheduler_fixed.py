"""Run jobs every few seconds on a thread pool; a daemon thread keeps the time.

Fixed: the timing thread stops when the pool refuses new work, which is what
``concurrent.futures`` does once the interpreter starts to exit.
"""

import threading
import time
from concurrent.futures import ThreadPoolExecutor


class JobScheduler:
    def __init__(self, workers=2, resolution=0.005):
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="job")
        self._jobs = []  # [interval, function, next run]
        self._resolution = resolution
        self._thread = threading.Thread(target=self._run, name="scheduler", daemon=True)
        self._thread.start()

    def every(self, interval, function):
        self._jobs.append([interval, function, time.monotonic()])

    def _run(self):
        while True:
            now = time.monotonic()
            for job in list(self._jobs):
                if now >= job[2]:
                    job[2] = now + job[0]
                    try:
                        self._pool.submit(job[1])
                    except RuntimeError:
                        return  # the pool was shut down (interpreter exit): stop timing
            time.sleep(self._resolution)
