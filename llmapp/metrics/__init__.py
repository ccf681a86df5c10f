"""Emit metrics (counters, timings, gauges) without ever blocking the caller.

``incr``, ``timing`` and ``gauge`` sample, then put a tuple on a bounded queue and
return; one daemon thread per process drains the queue into the backend named by
``LLM_METRICS_BACKEND`` (built with ``LLM_METRICS_OPTIONS`` as keyword arguments).
When the queue is full (``LLM_METRICS_QUEUE_SIZE`` items, e.g. because the backend is
stuck) the metric is dropped and counted in ``dropped_count()``; a metric the backend
fails to send (an agent that does not resolve, say) is counted in ``failed_count()``
and logged at most once a minute. The thread starts on the first metric, again in a
forked child, and the queue is flushed at exit.

Don't mutate a ``tags`` dict after passing it: it is copied, but only shallowly.
"""

import atexit
import inspect
import os
import threading
from collections.abc import Mapping
from logging import getLogger
from random import random

from django.utils.module_loading import import_string

from llmapp import conf
from llmapp.exceptions import ConfigurationError
from llmapp.metrics.base import MetricsBackend
from llmapp.metrics.dummy import DummyMetricsBackend
from llmapp.metrics.worker import MetricsWorker

__all__ = [
    "MetricsBackend",
    "dropped_count",
    "failed_count",
    "flush",
    "gauge",
    "get_backend",
    "incr",
    "timing",
]

logger = getLogger("llmapp.metrics")

# How long exit and a change of settings wait for the queue to drain: a stuck backend
# must hang neither.
SHORT_FLUSH_TIMEOUT = 1.0

_lock = threading.RLock()  # guards building the backend and starting the worker
_backend = None
_worker = None
_queue = None  # _worker.queue: the only state the hot path reads
_dropped = 0
_failed = 0
_count_lock = threading.Lock()


def incr(key, instance=None, tags=None, amount=1, sample_rate=1.0):
    """Add ``amount`` to the counter ``key``.

    With ``sample_rate`` below 1 only that fraction of calls is sent, and the backend
    scales what it receives by ``1 / sample_rate``. ``instance`` is sent as the tag
    "instance".
    """
    if sample_rate < 1.0 and random() >= sample_rate:  # noqa: S311 (sampling, not crypto)
        return
    _put(("incr", key, amount, instance, tags and dict(tags), sample_rate))


def timing(key, value, instance=None, tags=None, sample_rate=1.0):
    """Record a duration of ``value`` milliseconds under ``key``."""
    if sample_rate < 1.0 and random() >= sample_rate:  # noqa: S311 (sampling, not crypto)
        return
    _put(("timing", key, value, instance, tags and dict(tags), sample_rate))


def gauge(key, value, instance=None, tags=None, sample_rate=1.0):
    """Set the gauge ``key`` to ``value``."""
    if sample_rate < 1.0 and random() >= sample_rate:  # noqa: S311 (sampling, not crypto)
        return
    _put(("gauge", key, value, instance, tags and dict(tags), sample_rate))


def _put(item):
    q = _queue
    if q is None:
        q = _start()
    if not q.offer(item):
        global _dropped
        with _count_lock:
            _dropped += 1


def dropped_count():
    """Return how many metrics this process dropped because the queue was full.

    A forked child counts from 0.
    """
    return _dropped


def failed_count():
    """Return how many metrics this process failed to send because the backend raised.

    A forked child counts from 0.
    """
    return _failed


def _count_failure():
    global _failed
    with _count_lock:
        _failed += 1


def flush(timeout=5.0):
    """Wait until every metric emitted before this call reached the backend.

    Return False if that took longer than ``timeout`` seconds (a stuck backend).
    """
    worker = _worker
    return True if worker is None else worker.flush(timeout)


def get_backend():
    """Return the backend configured by ``LLM_METRICS_BACKEND``, built once and cached.

    Raise ConfigurationError, naming the setting to fix, if it cannot be built.
    """
    global _backend
    backend = _backend
    if backend is None:
        with _lock:
            if _backend is None:
                _backend = _build_backend()
            backend = _backend
    return backend


def _build_backend():
    path = conf.get_setting("LLM_METRICS_BACKEND")
    options = conf.get_setting("LLM_METRICS_OPTIONS") or {}
    try:
        backend_class = import_string(path)
    except (ImportError, TypeError, AttributeError) as e:
        raise ConfigurationError(f"LLM_METRICS_BACKEND is {path!r}, which could not be imported: {e}") from e
    if not (isinstance(backend_class, type) and issubclass(backend_class, MetricsBackend)):
        raise ConfigurationError(
            f"LLM_METRICS_BACKEND is {path!r}, which is not a subclass of llmapp.metrics.base.MetricsBackend"
        )
    if not isinstance(options, Mapping):
        raise ConfigurationError(
            f"LLM_METRICS_OPTIONS is {options!r}; set it to a dict of keyword arguments for {path}"
        )
    try:
        inspect.signature(backend_class).bind(**options)
    except TypeError as e:
        raise ConfigurationError(f"LLM_METRICS_OPTIONS do not fit {path}: {e}") from e
    return backend_class(**options)


def _start():
    """Start this process's worker, once; return its queue."""
    global _worker, _queue
    with _lock:
        if _worker is None:
            try:
                backend = get_backend()
            except Exception:
                logger.exception("Metrics are discarded: the metrics backend cannot be built")
                backend = DummyMetricsBackend()
            worker = MetricsWorker(backend, maxsize=_queue_size(), on_failure=_count_failure)
            try:
                worker.start()
            except RuntimeError:  # e.g. no threads left; callers must still not fail
                logger.exception("Metrics are discarded: the metrics thread cannot start")
            _worker, _queue = worker, worker.queue
        return _queue


def _queue_size():
    size = conf.get_setting("LLM_METRICS_QUEUE_SIZE")
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size
    # Queue(maxsize=0) would be unbounded, the one thing this queue must not be.
    default = conf.DEFAULTS["LLM_METRICS_QUEUE_SIZE"]
    logger.error("LLM_METRICS_QUEUE_SIZE is %r, not a positive integer; using %d", size, default)
    return default


@conf.on_change
def _reset():
    """Rebuild the backend and the worker from the new settings on the next metric.

    Metrics queued before the change still go to the old backend, before this returns
    (bounded by SHORT_FLUSH_TIMEOUT): a test switching backends sees none arrive late.
    """
    global _backend, _worker, _queue
    with _lock:
        old = _worker
        _backend = _worker = _queue = None
    if old is not None:
        old.flush(SHORT_FLUSH_TIMEOUT)
        old.stop()


def _after_fork_in_child():
    # The parent's thread does not exist here and its queue and locks may have been
    # held mid-operation by it: start over. The parent sends what it had queued.
    global _lock, _count_lock, _worker, _queue, _dropped, _failed
    _lock = threading.RLock()
    _count_lock = threading.Lock()
    _worker = _queue = None
    _dropped = _failed = 0


def _flush_at_exit():
    flush(timeout=SHORT_FLUSH_TIMEOUT)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_flush_at_exit)
