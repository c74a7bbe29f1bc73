import threading
import time

import pytest
from job_scheduler_fixed import JobScheduler


# A health check every 10 ms that takes 30 ms (a slow endpoint); the test never stops the
# scheduler, which stops by itself when the pool is shut down at exit.
@pytest.mark.daemon_exit
def test_health_check_runs_periodically():
    ran = threading.Semaphore(0)

    def check():
        time.sleep(0.03)  # stands for an HTTP request
        ran.release()

    scheduler = JobScheduler()
    scheduler.every(0.01, check)
    for _ in range(3):
        assert ran.acquire(timeout=5)
