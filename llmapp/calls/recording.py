"""Observe one call: its span, its metrics and its usage event, recorded once it ends."""

import logging
import time

from asgiref.sync import sync_to_async

from llmapp import eventstream, metrics, signals
from llmapp.calls.types import evolve
from llmapp.conf.secrets import redact
from llmapp.eventstream.events import ERROR, OK, REFUSED, build_event
from llmapp.exceptions import BudgetExceeded, ProviderRefused, RateLimited
from llmapp.sentry import tracing
from llmapp.sentry.frames import capture_exception

logger = logging.getLogger("llmapp")

#: The clock of latencies (tests replace it, with the providers', to run in simulated time).
clock = time.perf_counter

CALLS = "complete_prompt.calls"
LATENCY = "complete_prompt.latency_ms"
INPUT_TOKENS = "complete_prompt.input_tokens"
OUTPUT_TOKENS = "complete_prompt.output_tokens"
CACHE_HITS = "complete_prompt.cache_hits"
#: Millionths of a US dollar: counters count whole numbers.
COST = "complete_prompt.cost_microusd"


class Call:
    """Started just before the provider is called; ``succeeded`` or ``failed`` ends it."""

    __slots__ = ("attempts", "request", "span", "started")

    def __init__(self, attempts, *, streaming=False):
        #: The Attempts running the call: how many it took, and its set-up time.
        self.attempts = attempts
        self.request = attempts.request
        self.span = tracing.start_span(self.request, streaming=streaming)
        self.started = clock()

    def _latency_ms(self):
        """The provider's time: the call's, less its set-up (SDK imports, client construction)."""
        return max(0.0, clock() - self.started - self.attempts.setup) * 1000

    def succeeded(self, completion):
        """Record the completion; return it with its latency and attempts filled in."""
        completion, event = self._succeeded(completion)
        _record(event)
        if signals.completion_finished.receivers:  # none, nearly always: not a call more
            finished = signals.completion_finished.send_robust
            _report(finished(self.request.usecase, completion=completion, request=self.request))
        return completion

    def failed(self, error):
        _record(self._failed(error))
        for signal in _signals(error):
            _report(signal.send_robust(self.request.usecase, error=error, request=self.request))

    async def asucceeded(self, completion):
        """The async twin of :meth:`succeeded`: off the event loop only for a stream that blocks."""
        completion, event = self._succeeded(completion)
        await _arecord(event)
        if signals.completion_finished.receivers:
            finished = signals.completion_finished.asend_robust
            _report(await finished(self.request.usecase, completion=completion, request=self.request))
        return completion

    async def afailed(self, error):
        await _arecord(self._failed(error))
        for signal in _signals(error):
            _report(await signal.asend_robust(self.request.usecase, error=error, request=self.request))

    def _succeeded(self, completion):
        completion = evolve(
            completion,
            latency_ms=self._latency_ms(),
            attempts=self.attempts.count,
            cost=self.attempts.cost.total,
        )
        tracing.finish_span(self.span, completion=completion)
        self._count(
            OK, completion.provider, completion.model, completion.latency_ms, completion, completion.cost
        )
        if not eventstream.keeps_events():
            return completion, None
        return completion, build_event(
            self.request, completion.latency_ms, completion=completion, rates=self.attempts.cost.rates
        )

    def _failed(self, error):
        latency_ms = self._latency_ms()
        tracing.finish_span(self.span, error=error)
        provider = getattr(error, "provider", None) or self.request.provider
        self._count(
            REFUSED if isinstance(error, ProviderRefused) else ERROR,
            provider,
            self.request.model,
            latency_ms,
            cost=self.attempts.cost.total,
        )
        if not eventstream.keeps_events():
            return None
        return build_event(
            self.request,
            latency_ms,
            error=error,
            exception=_capture(error, self.request),
            attempts=self.attempts.count,
            cost=self.attempts.cost.total,
            rates=self.attempts.cost.rates,
        )

    def _count(self, status, provider, model, latency_ms, completion=None, cost=None):
        tags = {"usecase": self.request.usecase, "provider": provider, "model": model, "status": status}
        metrics.incr(CALLS, tags=tags)
        metrics.timing(LATENCY, latency_ms, tags=tags)
        if completion is not None and completion.cached:
            # Nothing was sent: no tokens were used, nothing was spent.
            metrics.incr(CACHE_HITS, tags=tags)
        elif completion is not None:
            if completion.input_tokens:
                metrics.incr(INPUT_TOKENS, amount=completion.input_tokens, tags=tags)
            if completion.output_tokens:
                metrics.incr(OUTPUT_TOKENS, amount=completion.output_tokens, tags=tags)
        if cost:
            metrics.incr(COST, amount=round(cost * 1_000_000), tags=tags)


def _signals(error):
    """The signals a call that failed with ``error`` sends."""
    if isinstance(error, BudgetExceeded):
        return (signals.completion_failed, signals.budget_exceeded)
    if isinstance(error, RateLimited):
        return (signals.completion_failed, signals.rate_limited)
    return (signals.completion_failed,)


def _report(responses):
    """Log the receivers that raised: a project's receiver never fails the call."""
    for receiver, response in responses:
        if isinstance(response, Exception):
            logger.error(
                "A receiver of an llmapp signal failed (%s): %s: %s",
                getattr(receiver, "__qualname__", receiver),
                type(response).__name__,
                redact(str(response)),
            )


def _record(event):
    if event is not None:
        eventstream.record(event)


async def _arecord(event):
    if event is None:
        return
    if eventstream.blocks():
        # A stream that writes on the caller's thread (the synchronous database stream, a
        # project's own) must not do it on the event loop.
        await sync_to_async(eventstream.record)(event)
    else:
        eventstream.record(event)


def _capture(error, request):
    """Capture the frames of ``error``; a failure to do so must not hide the error itself."""
    try:
        return capture_exception(error, request)
    except Exception:
        logger.exception("Could not capture the frames of a failed call")
        return None
