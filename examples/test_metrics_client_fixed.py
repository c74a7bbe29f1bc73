import pytest
from metrics_client_fixed import MetricsClient


# Same test as test_metrics_client.py: here the exit is clean and the plugin passes it.
@pytest.mark.daemon_exit
def test_counts_reach_the_file(tmp_path):
    client = MetricsClient(tmp_path / "metrics.txt")
    client.incr("requests", 3)
    client.flush()
    assert (tmp_path / "metrics.txt").read_text() == "requests 3\n"
