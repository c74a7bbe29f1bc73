import pytest
from log_shipper_fixed import LogShipper


# Logging is buffered: nothing is written on the request path.  The 100 000 buffered
# lines are shipped at exit, all of them, before the interpreter finalizes.
@pytest.mark.daemon_exit
def test_logging_does_no_io_on_the_request_path(capsys):
    shipper = LogShipper()
    for n in range(100_000):
        shipper.log(f"GET /items/{n} 200")
    assert shipper.pending == 100_000
    assert capsys.readouterr().out == ""
