"""Where each completion's usage event goes: LLM_EVENTSTREAM = database, logging or null.

Recording never raises into the caller, and never makes it wait on the usage database
(unless ``LLM_EVENTSTREAM_OPTIONS["synchronous"]`` asks for that, within its
``timeout``): a failure is logged and counted. ``flush()`` waits for what was recorded
to be stored; it runs by itself at exit, bounded.
"""

import atexit
import functools
import logging
import os
from collections.abc import Mapping

from django.db import DatabaseError, ProgrammingError

from llmapp import conf, metrics
from llmapp.conf.backends import backend_class
from llmapp.eventstream import writer
from llmapp.eventstream.base import EventStream
from llmapp.eventstream.database import DatabaseEventStream
from llmapp.eventstream.writer import dropped_count, may_wait
from llmapp.exceptions import ConfigurationError

__all__ = [
    "ALIASES",
    "blocks",
    "dropped_count",
    "flush",
    "get_eventstream",
    "keeps_events",
    "may_wait",
    "record",
    "wait_for_room",
]

ALIASES = {
    "database": "llmapp.eventstream.database.DatabaseEventStream",
    "logging": "llmapp.eventstream.logging.LoggingEventStream",
    "null": "llmapp.eventstream.null.NullEventStream",
}
FAILED_METRIC = "eventstream.failed"
#: Seconds exit waits for queued events when the stream names no timeout of its own.
EXIT_TIMEOUT = 1.0

logger = logging.getLogger("llmapp.eventstream")

OPTIONS_PROBLEM = {
    "check_id": "llmapp.E009",
    "hint": 'For example {"queue_size": 10000, "batch_size": 500, "max_wait": 0.2, '
    '"synchronous": False, "timeout": 1.0}.',
}

_built = []  # the streams built in this process, to flush at exit and close on a change


@functools.cache
def get_eventstream():
    """Return the stream LLM_EVENTSTREAM names, built with LLM_EVENTSTREAM_OPTIONS, once."""
    cls = backend_class("LLM_EVENTSTREAM", ALIASES)
    options = conf.get_setting("LLM_EVENTSTREAM_OPTIONS") or {}
    if not isinstance(options, Mapping):
        raise ConfigurationError(
            f"LLM_EVENTSTREAM_OPTIONS must be a dict, not {type(options).__name__}.", **OPTIONS_PROBLEM
        )
    # A stream takes the options it names; the database stream's are left alone by the others,
    # so that switching LLM_EVENTSTREAM to "logging" for a while needs no other change.
    known = cls.option_names | DatabaseEventStream.option_names
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigurationError(
            f"LLM_EVENTSTREAM_OPTIONS has unknown key(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(known))}.",
            **OPTIONS_PROBLEM,
        )
    try:
        stream = cls(**{name: value for name, value in options.items() if name in cls.option_names})
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(
            f"LLM_EVENTSTREAM_OPTIONS do not fit {cls.__name__}: {exc}", **OPTIONS_PROBLEM
        ) from None
    _built.append(stream)
    return stream


def losses():
    return writer.losses


def current():
    """Return the stream calls record into: the configured one, or one that drops what it is given.

    A mistake in LLM_EVENTSTREAM or its options must not fail the calls whose usage it
    would record (the check framework reports it, llmapp.E007 and E009): their events
    are dropped, counted and said once per interval.
    """
    try:
        return get_eventstream()
    except ConfigurationError as exc:
        return _misconfigured(str(exc))


@functools.cache
def _misconfigured(problem):
    return MisconfiguredStream(problem)


class MisconfiguredStream(EventStream):
    """What takes the events while the configured stream cannot be built: it drops them, counted."""

    blocking = False

    def __init__(self, problem):
        self.problem = problem

    def record(self, event):
        losses().add(1, f"the event stream is misconfigured ({self.problem})")


def keeps_events():
    """Say whether the current stream keeps events (``null`` does not): else build none."""
    return not current().discards_events


def blocks():
    """Say whether record() may wait on I/O in the caller's thread (then keep it off an event loop)."""
    return current().blocking


def record(event):
    """Send ``event`` to the current stream; log and count any failure."""
    try:
        current().record(event)
    except DatabaseError as exc:
        # One line that says it all, no traceback; most often an unmigrated database.
        unmigrated = isinstance(exc, ProgrammingError) or "no such table" in str(exc)
        advice = "; run manage.py migrate or set LLM_EVENTSTREAM to 'logging' or 'null'" if unmigrated else ""
        logger.warning(
            "Could not record the usage event of use case %r (%s: %s)%s.",
            event.usecase,
            type(exc).__name__,
            exc,
            advice,
        )
        metrics.incr(FAILED_METRIC, tags={"usecase": event.usecase})
    except Exception:
        logger.exception("Could not record the usage event of use case %r", event.usecase)
        metrics.incr(FAILED_METRIC, tags={"usecase": event.usecase})


def flush(timeout=5.0):
    """Wait until every event recorded so far is stored (or dropped); return False on timeout."""
    return current().flush(timeout)


def wait_for_room(timeout=5.0, headroom=0):
    """For a producer that may wait (a batch, not a request): let a congested queue drain first.

    Callers that cannot wait drop events when the queue is full; a batch, which makes
    calls as fast as the provider answers, would otherwise outrun the writer.
    ``headroom`` is how many events the producer may add before it calls again (its
    calls under way).
    """
    stream = current()
    if stream.congested(headroom):
        stream.flush(timeout)


@conf.on_change
def _reset():
    """Build the stream again from the new settings; the old one writes what it holds first."""
    get_eventstream.cache_clear()
    _misconfigured.cache_clear()
    while _built:
        _built.pop().close(EXIT_TIMEOUT)


def _after_fork_in_child():
    # The parent's writer thread does not exist here: the child starts its own, and the
    # parent writes what it had queued.
    get_eventstream.cache_clear()
    _misconfigured.cache_clear()
    _built.clear()
    writer.reset_dropped_count()  # its lock may have been held by a thread that is not here


def _flush_at_exit():
    for stream in list(_built):
        stream.close(getattr(stream, "timeout", EXIT_TIMEOUT))


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_flush_at_exit)
