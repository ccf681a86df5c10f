"""Observe one call: its span, its metrics and its usage event, recorded once it ends."""

import dataclasses
import logging
import time

from . import eventstream, metrics, tracing
from .events import ERROR, OK, build_event
from .frames import capture_exception

logger = logging.getLogger("llmapp")

CALLS = "complete_prompt.calls"
LATENCY = "complete_prompt.latency_ms"
INPUT_TOKENS = "complete_prompt.input_tokens"
OUTPUT_TOKENS = "complete_prompt.output_tokens"


class Call:
    """Started just before the provider is called; ``succeeded`` or ``failed`` ends it."""

    __slots__ = ("request", "span", "started")

    def __init__(self, request, *, streaming=False):
        self.request = request
        self.span = tracing.start_span(request, streaming=streaming)
        self.started = time.perf_counter()

    def _latency_ms(self):
        return (time.perf_counter() - self.started) * 1000

    def succeeded(self, completion, attempts=1):
        """Record the completion; return it with its latency and attempts filled in."""
        completion = dataclasses.replace(completion, latency_ms=self._latency_ms(), attempts=attempts)
        tracing.finish_span(self.span, completion=completion)
        self._count(OK, completion.provider, completion.model, completion.latency_ms, completion)
        if eventstream.keeps_events():
            eventstream.record(build_event(self.request, completion.latency_ms, completion=completion))
        return completion

    def failed(self, error, attempts=1):
        latency_ms = self._latency_ms()
        tracing.finish_span(self.span, error=error)
        provider = getattr(error, "provider", None) or self.request.provider
        self._count(ERROR, provider, self.request.model, latency_ms)
        if eventstream.keeps_events():
            event = build_event(
                self.request,
                latency_ms,
                error=error,
                exception=_capture(error, self.request),
                attempts=attempts,
            )
            eventstream.record(event)

    def _count(self, status, provider, model, latency_ms, completion=None):
        tags = {"usecase": self.request.usecase, "provider": provider, "model": model, "status": status}
        metrics.incr(CALLS, tags=tags)
        metrics.timing(LATENCY, latency_ms, tags=tags)
        if completion is not None:
            if completion.input_tokens:
                metrics.incr(INPUT_TOKENS, amount=completion.input_tokens, tags=tags)
            if completion.output_tokens:
                metrics.incr(OUTPUT_TOKENS, amount=completion.output_tokens, tags=tags)


def _capture(error, request):
    """Capture the frames of ``error``; a failure to do so must not hide the error itself."""
    try:
        return capture_exception(error, request)
    except Exception:
        logger.exception("Could not capture the frames of a failed call")
        return None
