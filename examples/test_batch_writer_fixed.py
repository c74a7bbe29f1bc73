import pytest
from batch_writer_fixed import BatchWriter

RECORDS = 200


def every_record_reached_the_file(result):
    """Runs in pytest's process after the child exited: what survived the exit?"""
    lines = (result.tmp_path / "records.txt").read_text().splitlines()
    lost = RECORDS - len(lines)
    assert not lost, f"{lost} of {RECORDS} accepted records never reached the file"


@pytest.mark.daemon_exit(check=every_record_reached_the_file)
def test_records_are_written(tmp_path):
    (tmp_path / "records.txt").touch()
    writer = BatchWriter(tmp_path / "records.txt")
    for n in range(RECORDS):
        writer.write(f"record {n}")
