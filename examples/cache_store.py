"""A small on-disk cache that saves its index when it is garbage-collected.

BUG: ``__del__`` imports ``json`` lazily, to keep import time low.  A cache that lives
until interpreter exit is finalized while the modules are torn down, where imports fail:
"Exception ignored in: <function CacheStore.__del__ ...>" followed by "ImportError:
sys.meta_path is None, Python is likely shutting down" (or "import of json halted; None
in sys.modules"), and the index is never saved.  The fix is in ``cache_store_fixed.py``.
"""

import os


class CacheStore:
    def __init__(self, directory):
        self._directory = directory
        self._index = {}

    def put(self, key, value):
        name = f"{len(self._index)}.bin"
        with open(os.path.join(self._directory, name), "wb") as f:
            f.write(value)
        self._index[key] = name

    def get(self, key):
        with open(os.path.join(self._directory, self._index[key]), "rb") as f:
            return f.read()

    def __del__(self):
        import json  # BUG: at interpreter exit, imports no longer work

        with open(os.path.join(self._directory, "index.json"), "w") as f:
            json.dump(self._index, f)


_caches = []


def open_cache(directory):
    cache = CacheStore(directory)
    _caches.append(cache)  # one cache per directory for the life of the process
    return cache
