"""Where each completion's usage event goes: LLM_EVENTSTREAM = database, logging or null.

Recording never raises into the caller: a failure is logged and counted.
"""

import functools
import logging

from asgiref.sync import sync_to_async
from django.db import DatabaseError

from .. import conf, metrics
from ..backends import backend_class

ALIASES = {
    "database": "llmapp.eventstream.database.DatabaseEventStream",
    "logging": "llmapp.eventstream.logging.LoggingEventStream",
    "null": "llmapp.eventstream.null.NullEventStream",
}
FAILED_METRIC = "eventstream.failed"

logger = logging.getLogger("llmapp.eventstream")


@functools.cache
def get_eventstream():
    return backend_class("LLM_EVENTSTREAM", ALIASES)()


def keeps_events():
    """Say whether the configured stream keeps events (``null`` does not): else build none."""
    return not get_eventstream().discards_events


def record(event):
    """Send ``event`` to the configured stream; log and count any failure."""
    try:
        get_eventstream().record(event)
    except DatabaseError as exc:
        # Most often an unmigrated database: one line says it all, no traceback.
        logger.warning(
            "Could not record the usage event of use case %r (%s: %s); run manage.py migrate "
            "or set LLM_EVENTSTREAM to 'logging' or 'null'.",
            event.usecase,
            type(exc).__name__,
            exc,
        )
        metrics.incr(FAILED_METRIC, tags={"usecase": event.usecase})
    except Exception:
        logger.exception("Could not record the usage event of use case %r", event.usecase)
        metrics.incr(FAILED_METRIC, tags={"usecase": event.usecase})


arecord = sync_to_async(record, thread_sensitive=True)

conf.on_change(get_eventstream.cache_clear)
