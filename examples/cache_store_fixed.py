"""A small on-disk cache that saves its index at exit.

Fixed: the index is saved by an atexit handler, while the interpreter is intact, with
modules imported at the top.
"""

import atexit
import json
import os


class CacheStore:
    def __init__(self, directory):
        self._directory = directory
        self._index = {}
        atexit.register(self.save)

    def put(self, key, value):
        name = f"{len(self._index)}.bin"
        with open(os.path.join(self._directory, name), "wb") as f:
            f.write(value)
        self._index[key] = name

    def get(self, key):
        with open(os.path.join(self._directory, self._index[key]), "rb") as f:
            return f.read()

    def save(self):
        with open(os.path.join(self._directory, "index.json"), "w") as f:
            json.dump(self._index, f)


_caches = []


def open_cache(directory):
    cache = CacheStore(directory)
    _caches.append(cache)
    return cache
