"""The bounded queue and daemon thread that carry metrics from callers to a backend."""

import contextlib
import queue
import threading
import time
from logging import getLogger

logger = getLogger("llmapp.metrics")

# Queue items are (kind, key, value, instance, tags, sample_rate); these two are not.
_FLUSH = "flush"
_STOP = ("stop",)

# A broken backend fails on every metric: log its first error, then one per interval.
ERROR_LOG_INTERVAL = 60.0


class MetricsWorker:
    """Drain a bounded queue of metrics into one backend, on one daemon thread.

    Callers put items with ``queue.put_nowait`` and drop them when it is full (see
    ``llmapp.metrics``); the worker is the only consumer. Each change of settings gets
    a new worker, so a queue's items always reach the backend they were queued for.
    """

    def __init__(self, backend, maxsize):
        self.backend = backend
        self.queue = queue.Queue(maxsize=maxsize)
        self.thread = threading.Thread(target=self._run, name="llmapp-metrics", daemon=True)
        self._stopping = False
        self._next_error_log = 0.0
        self._suppressed_errors = 0

    def start(self):
        self.thread.start()

    def flush(self, timeout):
        """Wait until every item queued before this call was handed to the backend.

        Return False if that did not happen within ``timeout`` seconds, e.g. because
        the backend is stuck.
        """
        deadline = time.monotonic() + timeout
        done = threading.Event()
        try:
            self.queue.put((_FLUSH, done), timeout=timeout)
        except queue.Full:
            return False
        return done.wait(max(0.0, deadline - time.monotonic()))

    def stop(self):
        """Let the thread exit once it has drained the queue; never blocks."""
        self._stopping = True
        # If the queue is full, _run sees _stopping once it has emptied it.
        with contextlib.suppress(queue.Full):
            self.queue.put_nowait(_STOP)

    def _run(self):
        get = self.queue.get
        while True:
            item = get()
            kind = item[0]
            if kind is _FLUSH:
                item[1].set()
            elif item is _STOP:
                return
            else:
                try:
                    self._send(item)
                except Exception:
                    self._log_error(kind, item[1])
            if self._stopping and self.queue.empty():
                return

    def _send(self, item):
        kind, key, value, instance, tags, sample_rate = item
        backend = self.backend
        if kind == "incr":
            backend.incr(key, instance=instance, tags=tags, amount=value, sample_rate=sample_rate)
        elif kind == "timing":
            backend.timing(key, value, instance=instance, tags=tags, sample_rate=sample_rate)
        else:
            backend.gauge(key, value, instance=instance, tags=tags, sample_rate=sample_rate)

    def _log_error(self, kind, key):
        now = time.monotonic()
        if now < self._next_error_log:
            self._suppressed_errors += 1
            return
        self._next_error_log = now + ERROR_LOG_INTERVAL
        suppressed, self._suppressed_errors = self._suppressed_errors, 0
        logger.exception(
            "%s failed to send %s %r%s",
            type(self.backend).__name__,
            kind,
            key,
            f" ({suppressed} earlier errors not logged)" if suppressed else "",
        )
