"""A circuit breaker per provider alias, its state in the Django cache.

With a shared cache (Redis, Memcached, the database) every worker of a deployment
sees the same state. It opens after ``FAILURES`` consecutive transient failures,
sends calls straight to the fallbacks while open, lets one probe through after
``COOLDOWN`` seconds, and closes on the first success. The breaker is an
optimisation: while its cache is down or slow, calls go through as if it were closed
(see ``llmapp.sharedstate``).

    LLM_PROVIDERS = {"openai": {..., "CIRCUIT_BREAKER": {"FAILURES": 5, "COOLDOWN": 30}}}
"""

import time
from dataclasses import dataclass, field

from . import conf, metrics, sharedstate

DEFAULTS = {"FAILURES": 5, "COOLDOWN": 30.0}
OPENED_METRIC = "circuit.opened"
#: Counted when the cache failed, or was skipped while it is down (see llmapp.sharedstate).
CACHE_ERRORS_METRIC = sharedstate.ERRORS_METRIC.format(name="circuit")
CACHE_SKIPPED_METRIC = sharedstate.SKIPPED_METRIC.format(name="circuit")
#: How long this process trusts a circuit it found closed with no failures to stay so.
#: It spares the cache read of nearly every call; a circuit another worker opens is
#: seen up to this much later here.
CLOSED_RECHECK = 1.0

_closed_until = {}  # alias -> time.monotonic() until which the circuit is taken as closed


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
    #: Whether the cache may hold failures to clear on success; allow() finds out.
    _dirty: bool = field(default=True, repr=False)

    @classmethod
    def for_provider(cls, alias, config):
        """Return the breaker of ``alias`` from its LLM_PROVIDERS config; None when turned off."""
        settings = config.get("CIRCUIT_BREAKER", {})
        if settings is None:
            return None
        settings = DEFAULTS | settings
        return cls(alias, int(settings["FAILURES"]), float(settings["COOLDOWN"]))

    @property
    def state(self):
        return sharedstate.get(conf.get_setting("LLM_CIRCUIT_BREAKER_CACHE"), "circuit")

    def _key(self, name):
        return f"llmapp:circuit:{self.alias}:{name}"

    def opened_at(self, budget=None):
        return self.state.get(self._key("opened"), budget=budget)

    def allow(self, budget=None):
        """Say whether a call may go to this provider now (a probe, when half-open).

        One cache operation on the common path, a closed circuit with no failures: the
        circuit is only ever opened after its failures were counted, and both keys are
        deleted together, so no failures means not open.
        """
        now = time.monotonic()
        if _closed_until.get(self.alias, 0.0) > now:
            self._dirty = False
            return True
        failures, opened = self._key("failures"), self._key("opened")
        found = self.state.get_many([failures, opened], budget=budget)
        if found is None or failures not in found:  # None: the cache failed, so fail open
            self._dirty = False
            _closed_until[self.alias] = now + CLOSED_RECHECK
            return True
        self._dirty = True
        opened_at = found.get(opened)
        if opened_at is None:
            return True
        if time.time() - opened_at < self.cooldown:
            return False
        # Half-open: the one worker that adds the probe key sends the probe.
        return self.state.add(
            self._key("probe"), 1, timeout=max(self.cooldown, 1), default=True, budget=budget
        )

    def retry_in(self, budget=None):
        opened = self.opened_at(budget)
        return 0.0 if opened is None else max(0.0, self.cooldown - (time.time() - opened))

    def record_success(self, budget=None):
        if self._dirty:
            keys = [self._key("failures"), self._key("opened"), self._key("probe")]
            if self.state.delete_many(keys, budget=budget):
                self._dirty = False

    def record_failure(self, budget=None):
        """Count a transient failure; open the circuit at the threshold (or after a failed probe).

        Return whether the circuit is open now; never when the cache failed.
        """
        _closed_until.pop(self.alias, None)
        self._dirty = True
        if self.state.run(self._count_failure, default=False, budget=budget):
            metrics.incr(OPENED_METRIC, tags={"provider": self.alias})
            return True
        return False

    def _count_failure(self, cache):
        # One cache operation, run on the cache's thread: a slow cache costs one wait.
        count = sharedstate.increment(cache, self._key("failures"))
        if count >= self.failures or cache.get(self._key("opened")) is not None:
            cache.set(self._key("opened"), time.time(), timeout=None)
            cache.delete(self._key("probe"))
            return True
        return False


conf.on_change(_closed_until.clear)
