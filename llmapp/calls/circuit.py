"""A circuit breaker per provider alias, and one per alias and model; state in the Django cache.

A gateway serves many models under one alias: one model rate limited, overloaded or
missing must not block the others. So failures that belong to a model (HTTP 429, an
overloaded model, a model the server does not have) count on that model's circuit, and
failures of the server itself (refused connections, timeouts, other 5xx) on the alias's;
a call goes to a route only when both are closed.

With a shared cache (Redis, Memcached, the database) every worker of a deployment
sees the same state. It opens after ``FAILURES`` consecutive transient failures,
sends calls straight to the fallbacks while open, lets one probe through after
``COOLDOWN`` seconds, and closes on the first success. The breaker is an
optimisation: while its cache is down or slow, calls go through as if it were closed
(see ``llmapp.calls.sharedstate``).

    LLM_PROVIDERS = {"openai": {..., "CIRCUIT_BREAKER": {"FAILURES": 5, "COOLDOWN": 30}}}
"""

import hashlib
import time
from dataclasses import dataclass, field

from llmapp import conf, metrics
from llmapp.calls import sharedstate

DEFAULTS = {"FAILURES": 5, "COOLDOWN": 30.0}
OPENED_METRIC = "circuit.opened"
#: Counted when the cache failed, or was skipped while it is down (see llmapp.calls.sharedstate).
CACHE_ERRORS_METRIC = sharedstate.ERRORS_METRIC.format(name="circuit")
CACHE_SKIPPED_METRIC = sharedstate.SKIPPED_METRIC.format(name="circuit")
#: How long this process trusts a circuit it found closed with no failures to stay so.
#: It spares the cache read of nearly every call; a circuit another worker opens is
#: seen up to this much later here.
CLOSED_RECHECK = 1.0
#: The time shared by every worker, which the cache holds (tests replace it to run in simulated time).
wall_clock = time.time
#: How many circuits this process remembers as closed at most.
MAX_REMEMBERED = 10_000

# What allow() can find in the cache.
CLOSED, FAILING, OPEN, PROBE = "closed", "failing", "open", "probe"

_closed_until = {}  # (alias, model) -> time.monotonic() until which the circuit is taken as closed


@dataclass
class CircuitBreaker:
    """One call's view of a provider's circuit; built per call, its state in the cache.

    The breaker is an optimisation: when its cache fails or is slow it lets calls
    through (fails open) and counts no failures, each cache operation waiting at most
    ``LLM_CACHE_TIMEOUT`` seconds, or ``budget`` (what is left of the call's deadline).
    """

    alias: str
    failures: int
    cooldown: float
    #: The model whose circuit this is, on ``alias``; None for the alias's own.
    model: str | None = None
    #: Whether the cache may hold failures to clear on success; allow() finds out.
    _dirty: bool = field(default=True, repr=False)
    #: When the circuit opened (wall_clock()), as allow() last read it; None when not open.
    opened_at: float | None = field(default=None, repr=False)

    @classmethod
    def for_provider(cls, alias, config, model=None):
        """Return the breaker of ``alias`` (of its ``model``, if given) from its LLM_PROVIDERS
        config; None when turned off."""
        settings = config.get("CIRCUIT_BREAKER", {})
        if settings is None:
            return None
        settings = DEFAULTS | settings
        return cls(alias, int(settings["FAILURES"]), float(settings["COOLDOWN"]), model)

    @property
    def scope(self):
        """What this circuit covers: (alias, None), or (alias, model)."""
        return (self.alias, self.model)

    @property
    def state(self):
        return sharedstate.get(conf.get_setting("LLM_CIRCUIT_BREAKER_CACHE"), "circuit")

    def _key(self, name):
        # A model name may hold any character: the cache key gets a digest of it.
        if self.model is None:
            return f"llmapp:circuit:{self.alias}:{name}"
        return f"llmapp:circuit:{self.alias}:model:{_digest(self.model)}:{name}"

    # Each method that needs the cache has an async twin for the event loop: the same
    # decision, from the same one cache operation, awaited instead of waited for.

    def allow(self, budget=None):
        """Say whether a call may go to this provider now (a probe, when half-open).

        No cache operation on the common path, a circuit this process found closed with
        no failures in the last CLOSED_RECHECK seconds; one otherwise.
        """
        if self._closed_in_memory():
            return True
        return self._allowed(self.state.run(self._decide, budget=budget))

    async def aallow(self, budget=None):
        if self._closed_in_memory():
            return True
        return self._allowed(await self.state.arun(self._decide, budget=budget))

    def record_success(self, budget=None):
        if self._dirty and self.state.run(self._clear, default=False, budget=budget):
            self._dirty = False

    async def arecord_success(self, budget=None):
        if self._dirty and await self.state.arun(self._clear, default=False, budget=budget):
            self._dirty = False

    def record_failure(self, budget=None):
        """Count a transient failure; open the circuit at the threshold (or after a failed probe).

        Return whether the circuit is open now; never when the cache failed.
        """
        self._failing()
        return self._opened(self.state.run(self._count_failure, default=False, budget=budget))

    async def arecord_failure(self, budget=None):
        self._failing()
        return self._opened(await self.state.arun(self._count_failure, default=False, budget=budget))

    def retry_in(self):
        """Seconds until the open circuit lets a probe through, as allow() last found it."""
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.cooldown - (wall_clock() - self.opened_at))

    # -- the decisions, and the cache operations they rest on --------------------------

    def _closed_in_memory(self):
        if _closed_until.get(self.scope, 0.0) > time.monotonic():
            self._dirty = False
            return True
        return False

    def _decide(self, cache):
        """Return (verdict, opened_at): one cache operation, run on the cache's thread."""
        found = cache.get_many([self._key("failures"), self._key("opened")])
        if self._key("failures") not in found:
            return CLOSED, None
        opened_at = found.get(self._key("opened"))
        if opened_at is None:
            return FAILING, None
        if wall_clock() - opened_at < self.cooldown:
            return OPEN, opened_at
        # Half-open: the one worker that adds the probe key sends the probe.
        probe = cache.add(self._key("probe"), 1, timeout=max(self.cooldown, 1))
        return (PROBE if probe else OPEN), opened_at

    def _allowed(self, decided):
        if decided is None or decided[0] == CLOSED:  # None: the cache failed, so fail open
            self._dirty = False
            if len(_closed_until) >= MAX_REMEMBERED:
                _closed_until.clear()  # models a caller names may be many: a cache, not a ledger
            _closed_until[self.scope] = time.monotonic() + CLOSED_RECHECK
            return True
        verdict, self.opened_at = decided
        self._dirty = True
        return verdict in (FAILING, PROBE)

    def _clear(self, cache):
        cache.delete_many([self._key("failures"), self._key("opened"), self._key("probe")])
        return True

    def _failing(self):
        _closed_until.pop(self.scope, None)
        self._dirty = True

    def _opened(self, opened):
        if opened:
            tags = {"provider": self.alias} | ({} if self.model is None else {"model": self.model})
            metrics.incr(OPENED_METRIC, tags=tags)
        return opened

    def _count_failure(self, cache):
        count = sharedstate.increment(cache, self._key("failures"))
        if count >= self.failures or cache.get(self._key("opened")) is not None:
            cache.set(self._key("opened"), wall_clock(), timeout=None)
            cache.delete(self._key("probe"))
            return True
        return False


def _digest(text):
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


def model_scoped(error):
    """Say whether ``error`` is a failure of the model rather than of the server: a rate
    limit, an overloaded model or one the server does not have, which another model behind
    the same alias may not share."""
    return getattr(error, "status_code", None) in MODEL_STATUSES


#: HTTP statuses that speak of one model: not found (404), rate limited (429), overloaded
#: (Anthropic's 529).
MODEL_STATUSES = frozenset({404, 429, 529})

conf.on_change(_closed_until.clear)
