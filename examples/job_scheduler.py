"""Run jobs every few seconds on a thread pool; a daemon thread keeps the time.

BUG: the timing thread is a daemon and keeps submitting while the interpreter exits.
``concurrent.futures`` shuts its pools down at the start of interpreter exit (it joins the
workers before atexit handlers run), and the daemon thread keeps running until the
runtime is finalizing: its next ``submit()`` raises "RuntimeError: cannot schedule new
futures after interpreter shutdown" in the thread ("Exception in thread scheduler"), and
the exit status stays 0.  A job still running at exit (here a slow health check) makes the
window wide.  Fix: a ``stop()`` that stops and joins the timing thread before the pool is
shut down.
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
                    self._pool.submit(job[1])
            time.sleep(self._resolution)
