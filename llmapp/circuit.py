"""A circuit breaker per provider alias, its state in the Django cache.

With a shared cache (Redis, Memcached, the database) every worker of a deployment
sees the same state. It opens after ``FAILURES`` consecutive transient failures,
sends calls straight to the fallbacks while open, lets one probe through after
``COOLDOWN`` seconds, and closes on the first success.

    LLM_PROVIDERS = {"openai": {..., "CIRCUIT_BREAKER": {"FAILURES": 5, "COOLDOWN": 30}}}
"""

import time
from dataclasses import dataclass, field

from django.core.cache import caches

from . import conf, metrics

DEFAULTS = {"FAILURES": 5, "COOLDOWN": 30.0}
OPENED_METRIC = "circuit.opened"
#: How long this process trusts a circuit it found closed with no failures to stay so.
#: It spares the cache read of nearly every call; a circuit another worker opens is
#: seen up to this much later here.
CLOSED_RECHECK = 1.0

_closed_until = {}  # alias -> time.monotonic() until which the circuit is taken as closed


@dataclass
class CircuitBreaker:
    """One call's view of a provider's circuit; built per call, its state in the cache."""

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
    def cache(self):
        return caches[conf.get_setting("LLM_CIRCUIT_BREAKER_CACHE")]

    def _key(self, name):
        return f"llmapp:circuit:{self.alias}:{name}"

    def opened_at(self):
        return self.cache.get(self._key("opened"))

    def allow(self):
        """Say whether a call may go to this provider now (a probe, when half-open).

        One cache read on the common path, a closed circuit with no failures: the
        circuit is only ever opened after its failures were counted, and both keys are
        deleted together, so no failures means not open.
        """
        now = time.monotonic()
        if _closed_until.get(self.alias, 0.0) > now:
            self._dirty = False
            return True
        cache = self.cache
        if cache.get(self._key("failures")) is None:
            self._dirty = False
            _closed_until[self.alias] = now + CLOSED_RECHECK
            return True
        self._dirty = True
        opened = cache.get(self._key("opened"))
        if opened is None:
            return True
        if time.time() - opened < self.cooldown:
            return False
        # Half-open: the one worker that adds the probe key sends the probe.
        return cache.add(self._key("probe"), 1, timeout=max(self.cooldown, 1))

    def retry_in(self):
        opened = self.opened_at()
        return 0.0 if opened is None else max(0.0, self.cooldown - (time.time() - opened))

    def record_success(self):
        if self._dirty:
            self.cache.delete_many([self._key("failures"), self._key("opened"), self._key("probe")])
            self._dirty = False

    def record_failure(self):
        """Count a transient failure; open the circuit at the threshold (or after a failed probe).

        Return whether the circuit is open now.
        """
        _closed_until.pop(self.alias, None)
        self._dirty = True
        cache, key = self.cache, self._key("failures")
        cache.add(key, 0, timeout=None)
        try:
            count = cache.incr(key)
        except ValueError:  # evicted between add and incr
            cache.set(key, 1, timeout=None)
            count = 1
        if count >= self.failures or self.opened_at() is not None:
            cache.set(self._key("opened"), time.time(), timeout=None)
            cache.delete(self._key("probe"))
            metrics.incr(OPENED_METRIC, tags={"provider": self.alias})
            return True
        return False


conf.on_change(_closed_until.clear)
