"""The one retry loop: full-jitter backoff, Retry-After, one deadline, fallbacks, circuits.

Callers drive it the same way whether they complete or stream (``async for``,
``afailed`` and ``asucceeded`` on the event loop):

    for backend, request in attempts:
        try:
            completion = backend.complete(request)
        except ProviderError as exc:
            attempts.sleep(attempts.failed(exc))  # raises when the call must end now
            continue
        attempts.succeeded()  # it took attempts.count attempts
        break
"""

import asyncio
import random
import time
from dataclasses import dataclass

from llmapp import metrics
from llmapp.calls.circuit import model_scoped
from llmapp.calls.output import OutputMismatch
from llmapp.calls.spend.cost import Tally
from llmapp.calls.types import evolve
from llmapp.exceptions import (
    BudgetExceeded,
    InvalidOutputError,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
)

BACKOFF_BASE = 0.5  # seconds before the first retry, at most
BACKOFF_CAP = 8.0
RETRIES_METRIC = "complete_prompt.retries"
FALLBACKS_METRIC = "complete_prompt.fallbacks"
REASKS_METRIC = "complete_prompt.output_retries"
#: The clock and the waits of every call's Attempts: a test replaces them to run in simulated time.
monotonic = time.monotonic
sleep = time.sleep
asleep = asyncio.sleep


@dataclass(frozen=True)
class Route:
    """One provider and model to try, with the circuit breakers of the provider and of the
    model (None when turned off), and the provider's rate limits (None for none)."""

    alias: str
    backend: object
    model: str
    breaker: object = None
    model_breaker: object = None
    limits: object = None

    @property
    def breakers(self):
        # The model's first: a half-open provider's one probe must not be spent on a route
        # whose model's circuit then keeps it from being sent.
        return [breaker for breaker in (self.model_breaker, self.breaker) if breaker is not None]

    def breaker_for(self, error):
        """The breaker that counts ``error``: the model's for a failure of the model."""
        if self.model_breaker is not None and model_scoped(error):
            return self.model_breaker
        return self.breaker


def _merged(turns):
    """Return ``turns`` with each run of one role's turns joined: a correction after an empty
    answer follows the user's own turn, and some providers want the roles to alternate."""
    merged = []
    for role, content in turns:
        if merged and merged[-1][0] == role:
            merged[-1] = (role, f"{merged[-1][1]}\n\n{content}")
        else:
            merged.append((role, content))
    return merged


def backoff(retry):
    """Full jitter: a random wait up to an exponentially growing cap."""
    return random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2**retry))  # noqa: S311 (not crypto)


class Attempts:
    """Yield (backend, request) for each attempt until one succeeds or the call must end."""

    def __init__(self, request, routes, *, retries, timeout, output_retries=1, clock=None):
        self.request = request
        self.routes = routes
        self.retries = retries
        #: How often an answer that does not match the request's output is asked again, per route.
        self.output_retries = output_retries
        #: What the attempts that answered cost, and at which rates.
        self.cost = Tally()
        #: The call's response cache (``responses.CachedAnswers``), or None.
        self.answers = None
        #: The budgets the call is held to (``budgets.Budgets``), or None; and what the
        #: attempt under way holds of them.
        self.budgets = None
        self._reservation = None
        #: The rate limits the call is held to (``ratelimits.Limiter``), or None; and the
        #: concurrency slots the attempt under way holds.
        self.limiter = None
        self._slots = None
        self.timeout = timeout
        # The module's, looked up now: what a test put there runs this call.
        self.clock = clock or monotonic
        self.sleep, self.asleep = sleep, asleep
        self.deadline = self.clock() + timeout
        self.count = 0
        #: Seconds spent importing SDKs and building clients, which are not the providers' time.
        self.setup = 0.0
        self.last_error = None
        #: (alias, error) of each route given up, in order: what the call's error reports.
        self.failures = []
        self.skipped = []
        self._route = None
        self._retry = 0
        self._reasks = 0
        #: The turns a re-ask adds on the current route: the answer that did not match, and
        #: what was wrong with it.
        self._corrections = ()
        self._give_up_route = False

    def __iter__(self):
        for position, route in enumerate(self.routes):
            # The breaker's cache may wait only for what is left of the deadline.
            allowed = all(breaker.allow(budget=self.left()) for breaker in route.breakers)
            if self.limiter is None and self.budgets is None:  # nothing to hold: the common case
                yield from self._on_route(position, route, allowed)
                continue
            for backend, attempt in self._on_route(position, route, allowed):
                if self.limiter is not None:
                    while not self._let_through(outcome := self.limiter.acquire(attempt)):
                        self.sleep(outcome.retry_after)
                        attempt = evolve(attempt, timeout=min(attempt.timeout, self.left()))
                if self.budgets is None or self._reserved(self.budgets.reserve(attempt)):
                    yield backend, attempt
        raise self._exhausted()

    async def __aiter__(self):
        """The same attempts for the event loop: a circuit's cache is awaited, not waited for."""
        for position, route in enumerate(self.routes):
            allowed = True
            for breaker in route.breakers:
                allowed = allowed and await breaker.aallow(budget=self.left())
            for backend, attempt in self._on_route(position, route, allowed):
                if self.limiter is not None:
                    while not self._let_through(outcome := await self.limiter.aacquire(attempt)):
                        await self.asleep(outcome.retry_after)
                        attempt = evolve(attempt, timeout=min(attempt.timeout, self.left()))
                if self.budgets is None or self._reserved(await self.budgets.areserve(attempt)):
                    yield backend, attempt
        raise self._exhausted()

    def _let_through(self, outcome):
        """Say whether a rate limit lets the attempt go (its Slots), or it is to wait; raise if neither."""
        if not isinstance(outcome, RateLimited):
            self._slots = outcome
            return True
        if not self.limiter.waits or outcome.retry_after >= self.left():
            raise outcome
        return False

    def _reserved(self, outcome):
        """Say whether the attempt may be sent: its budgets' Reservation, or their BudgetExceeded."""
        if not isinstance(outcome, BudgetExceeded):
            self._reservation = outcome
            return True
        self._release()
        self.count -= 1  # not sent: no attempt
        if not self.budgets.falls_back:
            raise outcome
        self._give_up(outcome)  # another route may cost less, or nothing
        return False

    def _on_route(self, position, route, allowed):
        if not allowed:
            open_models = [b for b in route.breakers if b.model is not None and b.opened_at is not None]
            self.skipped.append(f"{route.alias} model {route.model!r}" if open_models else route.alias)
            return
        self._route, self._give_up_route = route, False
        self._retry, self._reasks, self._corrections = 0, 0, ()
        if self.request.output is not None and route.backend.output_mode is None:
            self._give_up(
                ProviderError(
                    f"{type(route.backend).__name__} cannot ask for a typed answer (it has no output_modes)",
                    provider=route.alias,
                )
            )
            return
        if position:
            metrics.incr(FALLBACKS_METRIC, tags={"usecase": self.request.usecase, "provider": route.alias})
        # Each failure gives the route up, or takes one of its retries or re-asks.
        for _ in range(self.retries + self.output_retries + 1):
            left = self.left()
            if left <= 0:
                raise self._deadline_passed()
            self.count += 1
            own_timeout = route.backend.options.get("timeout")
            timeout = min(left, own_timeout) if own_timeout else left
            yield route.backend, self._attempt(route, timeout)
            if self._give_up_route:
                break

    def _attempt(self, route, timeout):
        request = evolve(
            self.request, provider=route.alias, model=route.model, timeout=timeout, deadline=self
        )
        if request.output is None:
            return request
        request = route.backend.output_request(request)
        if not self._corrections:
            return request
        *turns, (_, correction) = _merged((*request.turns, *self._corrections))
        return evolve(request, history=tuple(turns), message=correction)

    def answered(self, completion, streamed=False):
        """Account for an attempt's answer: add its cost; return it read into the output type.

        Raises InvalidOutputError for an answer that does not match (or was cut at the token
        limit); ``streamed``: its text reached the caller already, so no route may add to it.
        """
        cost = self.cost.add(self._route.alias, self._route.model, completion)
        if self._reservation is not None:
            self._reservation.settle(cost)
            self._reservation = None
        if self._slots is not None:
            self._release()
        output = self.request.output
        if output is None:
            return completion
        try:
            if completion.finish_reason == "length":
                raise OutputMismatch(
                    [f"$: the answer was cut at the token limit ({self.request.max_output_tokens} tokens)"]
                )
            return evolve(completion, parsed=output.parse(completion.text))
        except OutputMismatch as exc:
            error = InvalidOutputError(
                f"the answer does not match the output type {output.display}: {'; '.join(exc.errors)}",
                provider=completion.provider,
                request_id=completion.request_id,
                text=completion.text,
                errors=exc.errors,
            )
        if streamed:
            error.try_elsewhere = False
        raise error

    def left(self):
        return self.deadline - self.clock()

    @property
    def served_by_primary(self):
        """Whether the route that answered is the call's own (not a fallback's)."""
        return self._route is self.routes[0]

    def _release(self):
        """Give back what the attempt under way holds: its concurrency slots, and its budgets'
        reservation unless its answer settled it (an attempt that got none was not billed)."""
        if self._slots is not None:
            self._slots.release()
            self._slots = None
        if self._reservation is not None:
            self._reservation.release()
            self._reservation = None

    def ended(self, error=None, *, billed=False):
        """The call ended outside the loop (an exception of the caller's, a cancel, an abandoned
        stream): give back what the attempt under way holds, unless it may have been ``billed``
        (a stream whose text reached the caller), whose cost is then unknown."""
        if billed and self._reservation is not None:
            self.cost.total = None
            self._reservation = None  # held: what it cost is not known
        self._release()

    def _paused(self, error):
        # A provider that says when to come back is left alone that long by every worker.
        if self.limiter is not None and error.status_code == 429 and error.retry_after:
            self.limiter.pause(self._route.alias, error.retry_after)

    def failed(self, error):
        """Account for ``error``; return how long to wait before the next attempt, or raise it."""
        self._release()
        self._paused(error)
        if isinstance(error, InvalidOutputError):
            self.succeeded()  # the provider answered: its circuit (a half-open probe's too) is sound
        if self._reasked(error):
            return 0.0
        retryable = self._retryable(error)
        breaker = self._counting_breaker(error, retryable)
        opened = breaker is not None and breaker.record_failure(budget=self.left())
        return self._wait_after(error, opened) if retryable else 0.0

    async def afailed(self, error):
        self._release()
        self._paused(error)
        if isinstance(error, InvalidOutputError):
            await self.asucceeded()
        if self._reasked(error):
            return 0.0
        retryable = self._retryable(error)
        breaker = self._counting_breaker(error, retryable)
        opened = breaker is not None and await breaker.arecord_failure(budget=self.left())
        return self._wait_after(error, opened) if retryable else 0.0

    def _reasked(self, error):
        """Say whether the answer that did not match (``error``) is asked again on its route."""
        if not isinstance(error, InvalidOutputError) or not error.try_elsewhere:
            return False
        if self._reasks >= self.output_retries:
            return False
        self._reasks += 1
        self.last_error = error
        answer = (("assistant", error.text),) if error.text.strip() else ()
        # A correction of a correction keeps the turns before it.
        self._corrections = (
            *self._corrections,
            *answer,
            ("user", self.request.output.correction(error.errors)),
        )
        metrics.incr(REASKS_METRIC, tags={"usecase": self.request.usecase, "provider": self._route.alias})
        return True

    def _counting_breaker(self, error, retryable):
        """The circuit ``error`` counts on: the route's for a transient failure, the model's for
        one of its model that no retry passes (a model the server does not have), else none."""
        if retryable:
            return self._route.breaker_for(error)
        return self._route.model_breaker if model_scoped(error) else None

    def succeeded(self):
        """Record the success on the route's circuits."""
        for breaker in self._route.breakers:
            breaker.record_success(budget=self.left())

    async def asucceeded(self):
        for breaker in self._route.breakers:
            await breaker.arecord_success(budget=self.left())

    def _retryable(self, error):
        """Say whether ``error`` may be retried on its route; give the route up, or raise, if not.

        A transient error may pass on a retry. A refusal will not, here, but another route
        may answer. Anything else ends the call, its error saying how the routes before failed.
        """
        if not isinstance(error, ProviderError):
            raise error
        if error.transient:
            self.last_error = error
            return True
        if error.try_elsewhere:
            self._give_up(error)
            return False
        raise self._reported(error)

    def _give_up(self, error, why=None):
        """Try no more on this route, which failed with ``error``; ``why``, if given, says why not."""
        if why:
            error.reason = f"{error.reason}; {why}"
            error.args = (error.reason,)
        self.last_error = error
        self.failures.append((f"{self._route.alias}:{self._route.model}", error))
        self._give_up_route = True
        return 0.0

    def _reported(self, error):
        """Return ``error``, the call's last, saying how the routes given up before it failed."""
        error.earlier = tuple((route, failure) for route, failure in self.failures if failure is not error)
        return error

    def _wait_after(self, error, opened):
        if opened:
            # This failure opened the circuit (or a probe failed): retry elsewhere, not here.
            return self._give_up(error)
        if self._retry >= self.retries:
            return self._give_up(error)
        left = self.left()
        if error.retry_after is not None:
            if error.retry_after > left:
                # That route cannot answer in time; a fallback may.
                return self._give_up(
                    error,
                    f"the provider asked to retry after {error.retry_after:g}s, more than the "
                    f"{max(left, 0):.1f}s left of the {self.timeout:g}s deadline",
                )
            delay = error.retry_after
        else:
            delay = backoff(self._retry)
            if delay >= left:
                # Waiting would use up the deadline: let a fallback try with what is left.
                return self._give_up(error)
        self._retry += 1
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
            return self._reported(self.last_error)
        waits = [breaker.retry_in() for breaker in self.routes[0].breakers if breaker.opened_at is not None]
        retry_in = f"; it lets a call through again in {max(waits):.0f}s" if waits else ""
        return ProviderUnavailable(
            f"the circuit of provider(s) {', '.join(self.skipped)} is open after repeated failures"
            f"{retry_in}, and no fallback could take the call",
            provider=self.routes[0].alias,
        )
