import json

import pytest
from cache_store_fixed import open_cache


def the_index_was_saved(result):
    """Runs in pytest's process after the child exited: is the index on disk?"""
    index = result.tmp_path / "index.json"
    assert index.exists(), "the cache's index was never saved"
    assert json.loads(index.read_text()) == {"answer": "0.bin"}


@pytest.mark.daemon_exit(check=the_index_was_saved)
def test_values_round_trip(tmp_path):
    cache = open_cache(str(tmp_path))
    cache.put("answer", b"42")
    assert cache.get("answer") == b"42"
