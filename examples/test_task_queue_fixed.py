import pytest
from task_queue_fixed import TaskQueue


# The test never calls close(); the fixed queue stops its worker at exit by itself.
@pytest.mark.daemon_exit(timeout=2)
def test_results_come_back_in_order():
    tasks = TaskQueue()
    futures = [tasks.submit(pow, 2, n) for n in range(5)]
    assert [f.result(timeout=5) for f in futures] == [1, 2, 4, 8, 16]
