"""The bounded queue and daemon thread that carry metrics from callers to a backend."""

import queue
import threading
from logging import getLogger

from llmapp.metrics.throttle import Throttle, unsaid_note

logger = getLogger("llmapp.metrics")

# Queue items are (kind, key, value, instance, tags, sample_rate); these two are not.
_FLUSH = "flush"
_STOP = ("stop",)

# A broken backend fails on every metric: log its first error, then one per interval.
ERROR_LOG_INTERVAL = 60.0
# Once it has drained the queue, the worker pauses this long before it waits for the
# next metric: what callers emit meanwhile is taken in one go, and a put seldom has a
# waiting thread to wake (waking it for each metric, and handing it the GIL, cost
# ~12 µs of CPU per metric, ~70 µs per complete_prompt call on the openai provider).
BATCH_INTERVAL = 0.05


class BoundedQueue(queue.SimpleQueue):
    """A SimpleQueue (in C: a put is a fraction of Queue's) that offers room for ``maxsize`` metrics.

    The size is checked before the put, so threads racing for the last place may each
    take one: the bound holds to within the number of threads. Control items (flush,
    stop) are put regardless, so that they never wait for room.
    """

    def __init__(self, maxsize):
        self.maxsize = maxsize

    def offer(self, item):
        """Put ``item`` unless the queue is full; return whether it was put."""
        if self.qsize() >= self.maxsize:
            return False
        self.put(item)
        return True


class MetricsWorker:
    """Drain a bounded queue of metrics into one backend, on one daemon thread.

    Callers put items with ``queue.offer`` and drop them when it is full (see
    ``llmapp.metrics``); the worker is the only consumer. Each change of settings gets
    a new worker, so a queue's items always reach the backend they were queued for.
    """

    def __init__(self, backend, maxsize, on_failure=None):
        self.backend = backend
        self.on_failure = on_failure  # called, on the worker thread, for each metric that failed to send
        self.queue = BoundedQueue(maxsize)
        self.thread = threading.Thread(target=self._run, name="llmapp-metrics", daemon=True)
        self._stopping = False
        self._wake = threading.Event()  # cuts the pause short, for flush() and stop()
        self._errors = Throttle(ERROR_LOG_INTERVAL)

    def start(self):
        self.thread.start()

    def flush(self, timeout):
        """Wait until every item queued before this call was handed to the backend.

        Return False if that did not happen within ``timeout`` seconds, e.g. because
        the backend is stuck.
        """
        done = threading.Event()
        self.queue.put((_FLUSH, done))
        self._wake.set()
        return done.wait(timeout)

    def stop(self):
        """Let the thread exit once it has drained the queue; never blocks."""
        self._stopping = True
        self.queue.put(_STOP)
        self._wake.set()

    def _run(self):
        get, get_nowait = self.queue.get, self.queue.get_nowait
        while True:
            item = get()  # idle: block until the next metric
            while True:
                if item is _STOP:
                    return
                self._handle(item)
                if self._stopping and self.queue.empty():
                    return
                try:
                    item = get_nowait()
                except queue.Empty:
                    break
            self._wake.wait(BATCH_INTERVAL)
            self._wake.clear()

    def _handle(self, item):
        kind = item[0]
        if kind is _FLUSH:
            item[1].set()
            return
        try:
            self._send(item)
        except Exception as e:
            if self.on_failure is not None:
                self.on_failure()
            self._log_error(kind, item[1], e)

    def _send(self, item):
        kind, key, value, instance, tags, sample_rate = item
        backend = self.backend
        if kind == "incr":
            backend.incr(key, instance=instance, tags=tags, amount=value, sample_rate=sample_rate)
        elif kind == "timing":
            backend.timing(key, value, instance=instance, tags=tags, sample_rate=sample_rate)
        else:
            backend.gauge(key, value, instance=instance, tags=tags, sample_rate=sample_rate)

    def _log_error(self, kind, key, error):
        """Log a failed send, once per interval; call it from the except block."""
        unsaid = self._errors.due()
        if unsaid is None:
            return
        not_logged = unsaid_note(unsaid, "error(s)")
        if isinstance(error, OSError):
            # The network or the agent, not a bug: one line that says what to fix.
            logger.error("%s%s", self.backend.describe_error(error), not_logged)
            return
        logger.exception("%s failed to send %s %r%s", type(self.backend).__name__, kind, key, not_logged)
