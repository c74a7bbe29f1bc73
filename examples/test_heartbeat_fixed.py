import pytest
from heartbeat_fixed import Heartbeat


# The service starts its heartbeat and the test checks one beat; the thread is still
# beating when the interpreter exits.
@pytest.mark.daemon_exit
def test_heartbeat_beats():
    heartbeat = Heartbeat(interval=0.05)
    for _ in range(100):
        if heartbeat.beats:
            break
        __import__("time").sleep(0.01)
    assert heartbeat.beats >= 1
