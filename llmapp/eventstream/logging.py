import logging

from llmapp.eventstream.base import EventStream

logger = logging.getLogger("llmapp.usage")


class LoggingEventStream(EventStream):
    """Log each event on the ``llmapp.usage`` logger, its fields as ``extra``."""

    # As Django's own async views do: a log record is taken as cheap, whatever its handler.
    blocking = False

    def record(self, event):
        data = event.as_dict()
        data["created_at"] = data["created_at"].isoformat()
        logger.info(
            "usecase=%s provider=%s model=%s status=%s latency_ms=%.1f tokens=%s/%s",
            event.usecase,
            event.provider,
            event.model,
            event.status,
            event.latency_ms,
            event.input_tokens,
            event.output_tokens,
            extra={"usage_event": data},
        )
