import pytest
from session_tracker import SessionTracker


@pytest.mark.daemon_exit
def test_sessions_are_saved(tmp_path):
    tracker = SessionTracker(tmp_path / "sessions.txt")
    tracker.login("ada")
    tracker.login("grace")
    tracker.logout("ada")
    tracker.save()
    assert (tmp_path / "sessions.txt").read_text() == "grace\n"
