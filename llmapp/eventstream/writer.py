"""The bounded queue and daemon thread that carry usage events from callers to the database.

A caller's answer never waits on the usage database: ``offer()`` puts the event on a
bounded queue, and one writer thread per process inserts what the queue holds in
batches (one multi-row INSERT each) on its own database connection, whatever the
number of callers. A full queue or a failing database drops events: each is counted
(``eventstream.dropped`` and ``dropped_count()``) and logged once per interval, never
raised into a caller. ``flush()`` waits until what was queued before it is written.
"""

import contextlib
import logging
import queue
import threading
import time

from django.db import (
    DatabaseError,
    DataError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    connections,
    router,
    transaction,
)

from llmapp import metrics
from llmapp.calls.threadconnections import close_thread_connections
from llmapp.metrics.throttle import Throttle, unsaid_note

logger = logging.getLogger("llmapp.eventstream")

DROPPED_METRIC = "eventstream.dropped"
WRITTEN_METRIC = "eventstream.written"
#: A database that is down fails every batch: log the first loss, then one line per interval.
LOG_INTERVAL = 60.0
#: Seconds without an event after which the writer closes its database connection.
IDLE_CLOSE = 10.0
#: Seconds between two looks at a full queue, for a producer that may wait for room.
ROOM_POLL = 0.005

#: This thread's producer: how many seconds its events may wait for room in a full queue.
_producer = threading.local()


@contextlib.contextmanager
def may_wait(seconds):
    """Let the events this thread records wait up to ``seconds`` for room in a full queue.

    For producers that may wait (a batch's workers, not a request's thread): a batch makes
    calls as fast as the provider answers, and dropping its events because the writer is
    a moment behind would lose them for nothing. A writer stuck longer still drops them,
    counted.
    """
    before = getattr(_producer, "wait", 0.0)
    _producer.wait = seconds
    try:
        yield
    finally:
        _producer.wait = before


class _Marker:
    """A flush (or stop) in the queue: set once everything queued before it is written."""

    __slots__ = ("done", "stop")

    def __init__(self, stop=False):
        self.done = threading.Event()
        self.stop = stop


class EventWriter:
    """Insert queued UsageEvents in batches of up to ``batch_size``, on one daemon thread.

    The thread starts with the first event. After the first event of a batch it waits
    up to ``max_wait`` seconds for more, so that a busy process writes few, large
    batches, and a put seldom has a sleeping thread to wake; a full batch or a flush
    cuts the wait short.
    """

    def __init__(self, *, queue_size, batch_size, max_wait, insert):
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.max_wait = max_wait
        self.insert = insert  # (connection, events) -> None: writes them, or raises
        self.queue = queue.SimpleQueue()
        self.thread = None
        self.written = 0
        self.in_flight = 0  # events of the batch being written now
        self._waiting = 0  # events offered since the writer last woke
        self.stopped = False
        self.abandoned = False
        self._start_failures = Throttle(LOG_INTERVAL)
        self._lock = threading.Lock()
        self._wake = threading.Event()

    # -- the callers' side ---------------------------------------------------------

    def offer(self, event):
        """Queue ``event`` for writing; drop it, counted, when the queue is full.

        Never blocks, unless this thread's producer may wait for room (``may_wait``).
        """
        if self.stopped:
            self.lost(1, "its event stream was closed (a change of settings, or the process is exiting)")
            return False
        if self.queue.qsize() >= self.queue_size and not self._room_within(getattr(_producer, "wait", 0.0)):
            self.lost(1, f"the queue of {self.queue_size} events is full")
            return False
        self.queue.put(event)
        # Approximate under races, which only moves a write by max_wait at most.
        self._waiting += 1
        thread = self.thread
        if thread is None or not thread.is_alive():
            self._start()
        elif self._waiting >= self.batch_size:
            self._wake.set()
        return True

    def _room_within(self, seconds):
        """Wait up to ``seconds`` for room in the queue, waking the writer; say whether there is."""
        if seconds <= 0 or self.thread is None or not self.thread.is_alive():
            return False
        deadline = time.monotonic() + seconds
        while self.queue.qsize() >= self.queue_size:
            if time.monotonic() >= deadline or self.stopped:
                return False
            self._wake.set()  # a full batch waits for no more
            time.sleep(ROOM_POLL)
        return True

    def flush(self, timeout):
        """Wait until every event queued before this call is written or dropped; False on timeout."""
        if self.thread is None or not self.thread.is_alive():
            return self.queue.empty()
        marker = _Marker()
        self.queue.put(marker)
        self._wake.set()
        return marker.done.wait(timeout)

    def stop(self, timeout):
        """Write what is queued, within ``timeout``, and let the thread end; take no more events."""
        self.stopped = True
        if self.thread is None:
            return True
        marker = _Marker(stop=True)
        self.queue.put(marker)
        self._wake.set()
        deadline = time.monotonic() + timeout
        if not marker.done.wait(timeout):
            return False
        self.thread.join(max(0.0, deadline - time.monotonic()))
        return True

    def abandon(self, reason):
        """Count the events still queued as dropped, for ``reason``: the process is going."""
        self.abandoned = True  # from now on it closes no connection: see close_thread_connections()
        count = self.in_flight + sum(1 for item in _drain(self.queue) if not isinstance(item, _Marker))
        # The stop drained with them: once its write comes back, the thread still ends.
        self.queue.put(_Marker(stop=True))
        if count:
            self.lost(count, reason, now=True)

    def _start(self):
        with self._lock:
            if self.thread is not None and self.thread.is_alive():
                return
            thread = threading.Thread(target=self._run, name="llmapp-events", daemon=True)
            try:
                thread.start()
            except RuntimeError as exc:  # no threads left: the queue holds what it can, and drops the rest
                if self._start_failures.due() is not None:
                    logger.error("Usage events are not written: the writer thread cannot start (%s)", exc)
                return
            self.thread = thread

    # -- the writer thread -------------------------------------------------------------

    def _run(self):
        pending = []
        while True:
            try:
                item = self.queue.get(timeout=IDLE_CLOSE)
            except queue.Empty:
                close_thread_connections()  # idle: let the connection go; the next batch opens one
                item = self.queue.get()
            if not isinstance(item, _Marker):
                self._wake.wait(self.max_wait)
            self._wake.clear()
            self._waiting = 0
            while True:
                if isinstance(item, _Marker):
                    self._write(pending)
                    pending = []
                    if item.stop:
                        if not self.abandoned:
                            close_thread_connections()  # before the stop is said done
                        item.done.set()
                        return
                    item.done.set()
                else:
                    pending.append(item)
                    if len(pending) >= self.batch_size:
                        self._write(pending)
                        pending = []
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
            self._write(pending)
            pending = []

    def _write(self, events):
        if not events:
            return
        from llmapp.models import CompletionEvent

        alias = router.db_for_write(CompletionEvent)
        connection = connections[alias]
        self.in_flight = len(events)
        try:
            try:
                self._insert_reconnecting(connection, events)
            except (DataError, IntegrityError):
                if len(events) == 1:
                    raise
                # One bad row must not lose its batch: write them one by one.
                for event in events:
                    self._write_one(connection, event)
            else:
                self._written(len(events))
        except DatabaseError as exc:
            self.lost(len(events), f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            # Said without a traceback: its frames hold the events, and a logging integration
            # (Sentry's) would send their content along.
            self.lost(len(events), f"{type(exc).__name__}: {exc}")
        finally:
            self.in_flight = 0
            self._tidy(connection)

    def _insert_reconnecting(self, connection, events):
        """Insert ``events`` in one transaction; on a kept connection the server dropped, once more."""
        reused = connection.connection is not None
        try:
            with transaction.atomic(using=connection.alias):
                self.insert(connection, events)
        except (OperationalError, InterfaceError):
            # A restart, a failover or an idle timeout closed it while the writer waited:
            # one new connection, not a lost batch. A database that is down fails again.
            if not reused or self.abandoned:
                raise
            with contextlib.suppress(OperationalError, InterfaceError):
                connection.close()
            with transaction.atomic(using=connection.alias):
                self.insert(connection, events)

    def _write_one(self, connection, event):
        try:
            with transaction.atomic(using=connection.alias):
                self.insert(connection, [event])
        except (DataError, IntegrityError) as exc:
            self.lost(1, f"{type(exc).__name__}: {exc}")
        else:
            self._written(1)

    def _written(self, count):
        self.written += count
        metrics.incr(WRITTEN_METRIC, amount=count)

    def _tidy(self, connection):
        # Under DEBUG, Django keeps the queries of a connection; no request ends to clear them here.
        connection.queries_log.clear()
        # Kept between batches whatever CONN_MAX_AGE says (a PostgreSQL connection costs
        # the server a process): it is this thread's only one. Dropped once broken, and
        # once the writer has been idle for IDLE_CLOSE seconds.
        if self.abandoned:
            return
        if connection.connection is not None and connection.errors_occurred and not connection.is_usable():
            with contextlib.suppress(OperationalError, InterfaceError):
                connection.close()

    def lost(self, count, reason, log=True, now=False):
        """Count ``count`` dropped events; log why, at most once per interval (``now``: whatever it is)."""
        losses.add(count, reason, log=log, now=now)


def _drain(items):
    while True:
        try:
            yield items.get_nowait()
        except queue.Empty:
            return


class Losses:
    """The usage events this process dropped: counted, in metrics too, and said once per interval."""

    def __init__(self):
        self.count = 0
        self._lock = threading.Lock()
        self._throttle = Throttle(LOG_INTERVAL)

    def add(self, count, reason, log=True, now=False):
        with self._lock:
            self.count += count
        metrics.incr(DROPPED_METRIC, amount=count)
        if not log:
            return
        unsaid = self._throttle.due(count, now=now)
        if unsaid is not None:
            logger.warning(
                "Dropped %d usage event(s): %s.%s They are counted in %s.",
                count,
                reason,
                unsaid_note(unsaid, "were dropped"),
                DROPPED_METRIC,
            )


losses = Losses()


def dropped_count():
    """Return how many usage events this process dropped (a full queue, a failing database)."""
    return losses.count


def reset_dropped_count():
    """Count from 0 (a forked child, a test)."""
    global losses
    losses = Losses()
