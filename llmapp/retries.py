"""The one retry loop: full-jitter backoff, Retry-After, one deadline, fallbacks, circuits.

Callers drive it the same way whether they complete or stream (``async for``,
``afailed`` and ``asucceeded`` on the event loop):

    for backend, request in attempts:
        try:
            completion = backend.complete(request)
        except ProviderError as exc:
            time.sleep(attempts.failed(exc))  # raises when the call must end now
            continue
        attempts.succeeded()  # it took attempts.count attempts
        break
"""

import random
import time
from dataclasses import dataclass

from . import metrics
from .exceptions import ProviderError, ProviderTimeout, ProviderUnavailable
from .types import evolve

BACKOFF_BASE = 0.5  # seconds before the first retry, at most
BACKOFF_CAP = 8.0
RETRIES_METRIC = "complete_prompt.retries"
FALLBACKS_METRIC = "complete_prompt.fallbacks"


@dataclass(frozen=True)
class Route:
    """One provider and model to try, with its circuit breaker (None when turned off)."""

    alias: str
    backend: object
    model: str
    breaker: object = None


def backoff(retry):
    """Full jitter: a random wait up to an exponentially growing cap."""
    return random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2**retry))  # noqa: S311 (not crypto)


class Attempts:
    """Yield (backend, request) for each attempt until one succeeds or the call must end."""

    def __init__(self, request, routes, *, retries, timeout, clock=time.monotonic):
        self.request = request
        self.routes = routes
        self.retries = retries
        self.timeout = timeout
        self.clock = clock
        self.deadline = clock() + timeout
        self.count = 0
        self.last_error = None
        self.skipped = []
        self._route = None
        self._retry = 0
        self._give_up_route = False

    def __iter__(self):
        for position, route in enumerate(self.routes):
            # The breaker's cache may wait only for what is left of the deadline.
            allowed = route.breaker is None or route.breaker.allow(budget=self.left())
            yield from self._on_route(position, route, allowed)
        raise self._exhausted()

    async def __aiter__(self):
        """The same attempts for the event loop: a circuit's cache is awaited, not waited for."""
        for position, route in enumerate(self.routes):
            allowed = route.breaker is None or await route.breaker.aallow(budget=self.left())
            for attempt in self._on_route(position, route, allowed):
                yield attempt
        raise self._exhausted()

    def _on_route(self, position, route, allowed):
        if not allowed:
            self.skipped.append(route.alias)
            return
        if position:
            metrics.incr(FALLBACKS_METRIC, tags={"usecase": self.request.usecase, "provider": route.alias})
        self._route, self._give_up_route = route, False
        for retry in range(self.retries + 1):
            left = self.left()
            if left <= 0:
                raise self._deadline_passed()
            self._retry = retry
            self.count += 1
            own_timeout = route.backend.options.get("timeout")
            timeout = min(left, own_timeout) if own_timeout else left
            yield (
                route.backend,
                evolve(self.request, provider=route.alias, model=route.model, timeout=timeout, deadline=self),
            )
            if self._give_up_route:
                break

    def left(self):
        return self.deadline - self.clock()

    def failed(self, error):
        """Account for ``error``; return how long to wait before the next attempt, or raise it."""
        breaker = self._failing_route(error).breaker
        return self._wait_after(error, breaker is not None and breaker.record_failure(budget=self.left()))

    async def afailed(self, error):
        breaker = self._failing_route(error).breaker
        opened = breaker is not None and await breaker.arecord_failure(budget=self.left())
        return self._wait_after(error, opened)

    def succeeded(self):
        """Record the success on the route's circuit."""
        if self._route.breaker is not None:
            self._route.breaker.record_success(budget=self.left())

    async def asucceeded(self):
        if self._route.breaker is not None:
            await self._route.breaker.arecord_success(budget=self.left())

    def _failing_route(self, error):
        """Return the route that failed with ``error``; raise ``error`` when no retry can help."""
        if not isinstance(error, ProviderError) or not error.transient:
            raise error
        self.last_error = error
        return self._route

    def _wait_after(self, error, opened):
        if opened:
            # This failure opened the circuit (or a probe failed): retry elsewhere, not here.
            self._give_up_route = True
            return 0.0
        if self._retry >= self.retries:
            self._give_up_route = True
            return 0.0
        left = self.left()
        if error.retry_after is not None:
            if error.retry_after > left:
                raise ProviderError(
                    f"{error.reason}; the provider asked to retry after {error.retry_after:g}s, more than "
                    f"the {max(left, 0):.1f}s left of the {self.timeout:g}s deadline",
                    provider=error.provider,
                    status_code=error.status_code,
                    request_id=error.request_id,
                    retry_after=error.retry_after,
                ) from error
            delay = error.retry_after
        else:
            delay = backoff(self._retry)
            if delay >= left:
                # Waiting would use up the deadline: let a fallback try with what is left.
                self._give_up_route = True
                return 0.0
        metrics.incr(RETRIES_METRIC, tags={"usecase": self.request.usecase, "provider": self._route.alias})
        return delay

    def check_deadline(self):
        """Raise once the deadline has passed: a stream must not outlive it chunk by chunk."""
        if self.left() <= 0:
            error = self._deadline_passed()
            error.transient = False
            raise error

    def _deadline_passed(self):
        route = self._route or self.routes[0]
        return ProviderTimeout(
            f"the {self.timeout:g}s deadline of use case {self.request.usecase!r} passed "
            f"after {self.count} attempt(s)"
            + (f"; the last error was: {self.last_error.reason}" if self.last_error else ""),
            provider=route.alias,
        )

    def _exhausted(self):
        if self.count and self.left() <= 0:
            return self._deadline_passed()
        if self.last_error is not None:
            return self.last_error
        breaker = self.routes[0].breaker
        retry_in = ""
        if breaker is not None:
            retry_in = f"; it lets a call through again in {breaker.retry_in():.0f}s"
        return ProviderUnavailable(
            f"the circuit of provider(s) {', '.join(self.skipped)} is open after repeated failures"
            f"{retry_in}, and no fallback could take the call",
            provider=self.routes[0].alias,
        )
