import pytest
from event_sender import EventSender


# Passes in-process; the hang is in the atexit handler EventSender registered.
@pytest.mark.daemon_exit(timeout=2)
def test_events_are_delivered_in_order():
    delivered = []
    sender = EventSender(delivered.append)
    for n in range(3):
        sender.emit({"event": "login", "n": n})
    sender.flush()
    assert [e["n"] for e in delivered] == [0, 1, 2]
