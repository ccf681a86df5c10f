"""Say a recurring problem once per interval, with how many times it went unsaid: ``Throttle``.

A usage database, a cache or a metrics agent that is down fails on every call; each of
those failures is counted in metrics, and logged this way so that the log stays readable.
"""

import threading
import time


class Throttle:
    """Decide, thread-safely, whether a problem is to be said now; count the times it is not."""

    def __init__(self, interval, clock=time.monotonic):
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()
        self._next = 0.0
        self._unsaid = 0

    def due(self, count=1, *, now=False):
        """Return None when the problem is not to be said yet (``count`` is added to the unsaid),
        else how many times it went unsaid since it was last said; ``now`` says it whatever the interval."""
        with self._lock:
            moment = self.clock()
            if not now and moment < self._next:
                self._unsaid += count
                return None
            self._next = moment + self.interval
            unsaid, self._unsaid = self._unsaid, 0
            return unsaid

    def reset(self):
        with self._lock:
            self._next, self._unsaid = 0.0, 0


def unsaid_note(unsaid, what):
    """`` (N more <what> since the last report)``, or nothing."""
    return f" ({unsaid} more {what} since the last report)" if unsaid else ""
