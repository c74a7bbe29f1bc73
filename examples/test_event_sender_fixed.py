import pytest
from event_sender_fixed import EventSender


# The atexit handler EventSender registered delivers what is left and ends the thread.
@pytest.mark.daemon_exit(timeout=2)
def test_events_are_delivered_in_order():
    delivered = []
    sender = EventSender(delivered.append)
    for n in range(3):
        sender.emit({"event": "login", "n": n})
    sender.flush()
    assert [e["n"] for e in delivered] == [0, 1, 2]
