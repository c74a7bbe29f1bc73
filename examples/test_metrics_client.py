import pytest
from metrics_client import MetricsClient


# Relies on the atexit handler to close the client, as an application would.
@pytest.mark.daemon_exit
def test_counts_reach_the_file(tmp_path):
    client = MetricsClient(tmp_path / "metrics.txt")
    client.incr("requests", 3)
    client.flush()
    assert (tmp_path / "metrics.txt").read_text() == "requests 3\n"
