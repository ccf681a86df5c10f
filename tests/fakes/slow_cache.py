"""A local-memory cache whose increments wait for ``release``: a cache that hangs, then comes back."""

import threading

from django.core.cache.backends.locmem import LocMemCache

#: Set it to let the held increments through.
release = threading.Event()


class SlowLocMemCache(LocMemCache):
    def incr(self, key, delta=1, version=None):
        release.wait(10)
        return super().incr(key, delta, version)
