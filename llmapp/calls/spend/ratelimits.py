"""Rate limits: requests and tokens per minute, and calls at once, held across every worker.

    LLM_USECASES["triage"]["RATE_LIMIT"] = {
        "RPM": 60, "TPM": 200000, "CONCURRENCY": 8, "PER_SUBJECT": {"RPM": 10},
        "ON_LIMIT": "raise",  # or "wait"
    }
    LLM_PROVIDERS["openai"]["RATE_LIMIT"] = {"RPM": 500, "TPM": 2000000}  # the vendor's quota

Each attempt takes, before it is sent, one request (and its estimated tokens: its input
and MAX_OUTPUT_TOKENS) from the counters of the current minute of each scope that limits
it, with atomic increments in the shared cache (``LLM_LIMITS_CACHE``), and a concurrency
slot: a key of its own, added atomically and expiring with the call's deadline, so that a
worker that dies gives its slots back. A limit reached raises RateLimited, with how long
until the next minute (or slot) and which scope; with "wait" the call waits within its
deadline first. A provider's 429 that says when to come back pauses its alias for every
worker that long. A cache that is down lets calls through, as a budget's does.
"""

import hashlib
import time
from dataclasses import dataclass

from llmapp import metrics
from llmapp.calls import sharedstate
from llmapp.calls.sharedstate import increment
from llmapp.exceptions import ConfigurationError, RateLimited

RAISE, WAIT = "raise", "wait"
MINUTE = 60
LIMIT_KEYS = frozenset({"RPM", "TPM", "CONCURRENCY"})
THROTTLED = "complete_prompt.throttled"
#: The clock of minutes (tests replace it with the call's).
clock = time.time
RATE_LIMIT_HINT = (
    'For example {"RPM": 60, "TPM": 200000, "CONCURRENCY": 8, "PER_SUBJECT": {"RPM": 10}, '
    '"ON_LIMIT": "raise"}: whole numbers from 1; a provider\'s RATE_LIMIT takes RPM and TPM.'
)


@dataclass(frozen=True)
class Limits:
    """What one scope allows: requests and tokens a minute, calls at once; None for no limit."""

    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None


@dataclass(frozen=True)
class RateLimit:
    usecase: Limits | None
    per_subject: Limits | None
    on_limit: str


def parse_limits(where, value, keys=LIMIT_KEYS):
    """Return the Limits of a RATE_LIMIT's (or PER_SUBJECT's) numbers; raise ConfigurationError."""
    if not isinstance(value, dict) or set(value) - keys:
        raise _wrong(f"{where} must be a dict of {', '.join(sorted(keys))}.")
    for key, number in value.items():
        if isinstance(number, bool) or not isinstance(number, int) or number < 1:
            raise _wrong(f"{where}[{key!r}] must be a whole number from 1, got {number!r}.")
    return Limits(value.get("RPM"), value.get("TPM"), value.get("CONCURRENCY"))


def parse_rate_limit(usecase, value):
    """Return a use case's RateLimit (None for none); raise its ConfigurationError."""
    if value is None:
        return None
    where = f"LLM_USECASES[{usecase!r}]['RATE_LIMIT']"
    if not isinstance(value, dict):
        raise _wrong(f"{where} must be a dict of RPM, TPM, CONCURRENCY, PER_SUBJECT and ON_LIMIT, or None.")
    own = {key: number for key, number in value.items() if key not in ("PER_SUBJECT", "ON_LIMIT")}
    on_limit = value.get("ON_LIMIT", RAISE)
    if on_limit not in (RAISE, WAIT):
        raise _wrong(f"{where}['ON_LIMIT'] must be 'raise' or 'wait'.")
    per_subject = value.get("PER_SUBJECT")
    return RateLimit(
        usecase=parse_limits(where, own) if own else None,
        per_subject=parse_limits(f"{where}['PER_SUBJECT']", per_subject) if per_subject is not None else None,
        on_limit=on_limit,
    )


def provider_limits(alias, config):
    """The Limits of provider ``alias``'s RATE_LIMIT (RPM and TPM), or None; raises ConfigurationError."""
    value = config.get("RATE_LIMIT") if isinstance(config, dict) else None
    if value is None:
        return None
    return parse_limits(f"LLM_PROVIDERS[{alias!r}]['RATE_LIMIT']", value, keys=frozenset({"RPM", "TPM"}))


def _wrong(message):
    return ConfigurationError(message, check_id="llmapp.E029", hint=RATE_LIMIT_HINT, field="RATE_LIMIT")


class Slots:
    """The concurrency slots one attempt holds, given back when it ends."""

    def __init__(self, state, keys):
        self.state = state
        self.keys = keys

    def release(self):
        keys, self.keys = self.keys, []
        if keys:
            self.state.post(lambda cache: cache.delete_many(keys))


class Limiter:
    """The rate limits one call is held to: its use case's, its subject's and its providers'."""

    def __init__(self, usecase, rate_limit, subject):
        self.usecase = usecase
        self.rate_limit = rate_limit
        self.subject = subject
        self.state = sharedstate.get(sharedstate.limits_alias(), "limits")

    @property
    def waits(self):
        return self.rate_limit is not None and self.rate_limit.on_limit == WAIT

    def scopes(self, request):
        """(scope, key name, Limits) of each limit ``request``'s attempt is held to."""
        from llmapp.providers import providers

        scopes = []
        if self.rate_limit is not None and self.rate_limit.usecase is not None:
            scopes.append((f"use case {self.usecase!r}", f"usecase:{self.usecase}", self.rate_limit.usecase))
        if (
            self.rate_limit is not None
            and self.rate_limit.per_subject is not None
            and self.subject is not None
        ):
            scopes.append(
                (
                    "this subject",
                    f"subject:{self.usecase}:{_digest(self.subject)}",
                    self.rate_limit.per_subject,
                )
            )
        provider = provider_limits(request.provider, providers.settings.get(request.provider))
        if provider is not None:
            scopes.append((f"provider {request.provider!r}", f"provider:{request.provider}", provider))
        return scopes

    def acquire(self, request):
        """Take ``request``'s share of every limit; return its Slots, or the RateLimited that refused it."""
        plan = self._plan(request)
        if plan is None:
            return Slots(self.state, [])
        return self._outcome(
            self.state.run_or_undo(lambda cache: _take(cache, plan), _untake, budget=_left(request))
        )

    async def aacquire(self, request):
        plan = self._plan(request)
        if plan is None:
            return Slots(self.state, [])
        outcome = await self.state.arun_or_undo(
            lambda cache: _take(cache, plan), _untake, budget=_left(request)
        )
        return self._outcome(outcome)

    def _plan(self, request):
        from llmapp.providers.tokens import request_tokens

        scopes = self.scopes(request)
        if not scopes:
            return None
        now = clock()
        minute = int(now // MINUTE)
        next_minute = (minute + 1) * MINUTE - now
        tokens = request_tokens(request) + request.max_output_tokens
        slot_ttl = max(1, int(_left(request) or MINUTE) + 5)
        return [
            (scope, f"llmapp:rate:{name}", limits, minute, next_minute, tokens, slot_ttl)
            for scope, name, limits in scopes
        ]

    def _outcome(self, outcome):
        if outcome is None:  # the cache failed: counted there; the call goes on
            return Slots(self.state, [])
        if outcome[0] == "taken":
            return Slots(self.state, outcome[1])
        _, scope, what, retry_after = outcome
        metrics.incr(THROTTLED, tags={"usecase": self.usecase})
        return RateLimited(usecase=self.usecase, scope=scope, limit=what, retry_after=retry_after)

    def pause(self, alias, seconds):
        """Hold every worker's calls to provider ``alias`` for ``seconds`` (its 429 said so), if it
        has a RATE_LIMIT."""
        from llmapp.providers import providers

        if provider_limits(alias, providers.settings.get(alias)) is None:
            return
        until = clock() + seconds
        self.state.post(
            lambda cache: cache.set(f"llmapp:rate:pause:{alias}", until, max(1, int(seconds) + 1))
        )


def _take(cache, plan):
    """Take one request, its tokens and a slot from each scope, or nothing; say which refused."""
    undo, slots = [], []

    def refuse(scope, what, retry_after):
        for key, amount, ttl in undo:
            increment(cache, key, -amount, ttl)
        if slots:
            cache.delete_many(slots)
        return ("refused", scope, what, retry_after)

    for scope, name, limits, minute, next_minute, tokens, slot_ttl in plan:
        if name.startswith("llmapp:rate:provider:"):
            paused_until = cache.get(f"llmapp:rate:pause:{name.rpartition(':')[2]}")
            if paused_until is not None and paused_until > clock():
                return refuse(scope, "HTTP 429", paused_until - clock())
        for what, limit, amount in (("RPM", limits.rpm, 1), ("TPM", limits.tpm, tokens)):
            if limit is None:
                continue
            key = f"{name}:{what}:{minute}"
            if increment(cache, key, amount, MINUTE * 2) > limit:
                increment(cache, key, -amount, MINUTE * 2)
                return refuse(scope, what, next_minute)
            undo.append((key, amount, MINUTE * 2))
        if limits.concurrency is not None:
            slot = next(
                (
                    key
                    for key in (f"{name}:slot:{number}" for number in range(limits.concurrency))
                    if cache.add(key, 1, slot_ttl)
                ),
                None,
            )
            if slot is None:
                return refuse(scope, "CONCURRENCY", 1.0)
            slots.append(slot)
    return ("taken", slots, undo)


def _untake(cache, outcome):
    """Give back what ``_take`` took, when its caller stopped waiting for it."""
    if outcome is not None and outcome[0] == "taken":
        for key, amount, ttl in outcome[2]:
            increment(cache, key, -amount, ttl)
        if outcome[1]:
            cache.delete_many(outcome[1])


def _digest(text):
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _left(request):
    return request.deadline.left() if request.deadline is not None else None
