"""Budgets: what a use case, and each of its subjects, may spend per period, shared by every worker.

    LLM_USECASES["triage"]["BUDGET"] = {
        "USD": "50", "PERIOD": "1d", "ON_EXCEEDED": "raise",  # or "fallback"
        "PER_SUBJECT": {"USD": "0.50", "PERIOD": "1d"},  # complete_prompt(..., subject=request.user)
    }

Before an attempt is sent, the most it can cost (its estimated input, and MAX_OUTPUT_TOKENS
out, at its route's PRICES) is reserved with one atomic increment per scope in the shared
cache (``LLM_LIMITS_CACHE``); once it has answered, the reservation is settled to what it
cost. So workers racing for the last of a budget never spend more than it together. An
attempt whose reservation does not fit is not sent: with "raise" the call raises
BudgetExceeded, with "fallback" the next route whose reservation fits is tried. A route
that costs nothing (FREE) is always usable; one with no price cannot be held to a budget
(a check says so). Each period is a fixed window from the Unix epoch, in UTC. A cache
that is down lets calls through: a budget is a guard, not a gate that may fail the site.
"""

import hashlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation

from llmapp.calls import sharedstate
from llmapp.calls.sharedstate import increment
from llmapp.calls.spend.cost import MAX_AMOUNT, most_cost
from llmapp.conf.durations import parse_duration
from llmapp.exceptions import BudgetExceeded, ConfigurationError, InvalidRequestError

#: The longest subject, as the usage event's column holds it.
MAX_SUBJECT = 200
#: Counters are kept in millionths of a dollar: whole numbers, which caches add atomically.
MICRO = Decimal(1_000_000)
RAISE, FALLBACK = "raise", "fallback"
BUDGET_HINT = (
    'For example {"USD": "50", "PERIOD": "1d", "ON_EXCEEDED": "raise", "PER_SUBJECT": {"USD": "0.50", '
    '"PERIOD": "1d"}}: dollars as strings, periods as 30m, 12h, 1d or 1w.'
)
#: The clock of periods (tests replace it).
clock = time.time


@dataclass(frozen=True)
class Limit:
    """At most ``usd`` per ``period``."""

    usd: Decimal
    period: timedelta

    @property
    def micros(self):
        return int(self.usd * MICRO)

    def window(self, now):
        """The number of the period ``now`` (a Unix time) falls in, and when that period ends."""
        seconds = self.period.total_seconds()
        number = int(now // seconds)
        return number, datetime.fromtimestamp((number + 1) * seconds, tz=UTC)


@dataclass(frozen=True)
class Budget:
    total: Limit | None
    per_subject: Limit | None
    on_exceeded: str


def parse_budget(usecase, value):
    """Return the Budget of a use case's BUDGET (None for none); raise its ConfigurationError."""
    if value is None:
        return None
    where = f"LLM_USECASES[{usecase!r}]['BUDGET']"
    if not isinstance(value, dict) or set(value) - {"USD", "PERIOD", "ON_EXCEEDED", "PER_SUBJECT"}:
        raise _wrong(f"{where} must be a dict of USD, PERIOD, ON_EXCEEDED and PER_SUBJECT, or None.")
    on_exceeded = value.get("ON_EXCEEDED", RAISE)
    if on_exceeded not in (RAISE, FALLBACK):
        raise _wrong(f"{where}['ON_EXCEEDED'] must be 'raise' or 'fallback'.")
    total = _limit(where, value) if "USD" in value or "PERIOD" in value else None
    subject = value.get("PER_SUBJECT")
    if subject is not None and (not isinstance(subject, dict) or set(subject) - {"USD", "PERIOD"}):
        raise _wrong(f"{where}['PER_SUBJECT'] must be a dict of USD and PERIOD.")
    per_subject = _limit(f"{where}['PER_SUBJECT']", subject) if subject is not None else None
    if total is None and per_subject is None:
        raise _wrong(f"{where} sets no limit: give USD and PERIOD, or PER_SUBJECT.")
    return Budget(total, per_subject, on_exceeded)


def _limit(where, value):
    usd, period = value.get("USD"), value.get("PERIOD", "1d")
    if isinstance(usd, float | bool) or not isinstance(usd, str | int | Decimal):
        raise _wrong(f"{where}['USD'] must be a decimal string such as '50'.")
    try:
        usd = Decimal(str(usd))
    except InvalidOperation:
        raise _wrong(f"{where}['USD'] must be a decimal string such as '50'.") from None
    if not usd.is_finite() or usd < 0 or usd > MAX_AMOUNT:
        raise _wrong(f"{where}['USD'] must be an amount from 0 up to {MAX_AMOUNT:,}.")
    try:
        period = parse_duration(period)
    except ValueError as exc:
        raise _wrong(f"{where}['PERIOD'] {exc}.") from None
    return Limit(usd, period)


def _wrong(message):
    return ConfigurationError(message, check_id="llmapp.E028", hint=BUDGET_HINT, field="BUDGET")


def subject_key(subject):
    """Name a call's subject: ``app_label.model:pk`` for a model instance, or the string given."""
    if subject is None:
        return None
    meta = getattr(subject, "_meta", None)
    if meta is not None and getattr(subject, "pk", None) is not None:
        key = f"{meta.label_lower}:{subject.pk}"
    elif getattr(subject, "is_anonymous", False) is True:
        return "anonymous"  # request.user of a visitor: every visitor shares one subject
    elif isinstance(subject, str) and subject.strip():
        key = subject
    else:
        raise InvalidRequestError(
            f"subject must be a saved model instance or a non-empty string, got a {type(subject).__name__}."
        )
    if len(key) > MAX_SUBJECT:
        raise InvalidRequestError(f"subject must be at most {MAX_SUBJECT} characters, got {len(key)}.")
    return key


class Reservation:
    """What one attempt holds of its budgets: (counter key, micro-dollars) for each scope."""

    def __init__(self, state, held):
        self.state = state
        self.held = held

    def settle(self, cost):
        """Give back what the attempt did not spend; keep it all when its cost is unknown."""
        if cost is None or not self.held:
            return
        spent = int(cost * MICRO)
        held, self.held = self.held, []
        self.state.post(
            lambda cache: [increment(cache, key, spent - amount, ttl) for key, amount, ttl in held]
        )

    def release(self):
        """Give back all of it: the attempt got no answer, and was not billed."""
        self.settle(Decimal(0))


class Budgets:
    """The budgets one call is held to: its use case's, and its subject's."""

    def __init__(self, usecase, budget, subject):
        self.usecase = usecase
        self.budget = budget
        self.subject = subject
        self.state = sharedstate.get(sharedstate.limits_alias(), "budgets")

    @property
    def falls_back(self):
        return self.budget.on_exceeded == FALLBACK

    def _scopes(self):
        scopes = []
        if self.budget.total is not None:
            scopes.append(("use case", self.budget.total, self.usecase))
        if self.budget.per_subject is not None and self.subject is not None:
            digest = hashlib.sha256(self.subject.encode()).hexdigest()[:32]
            scopes.append(("subject", self.budget.per_subject, f"{self.usecase}:subject:{digest}"))
        return scopes

    def _plan(self, request):
        """The reservation ``request`` needs: (scope, limit, key, micros, ttl, resets) each; None to skip."""
        worst = most_cost(request)
        if not worst:  # free, or unpriced (a check warns): nothing to hold
            return None
        now = clock()
        plan = []
        for scope, limit, name in self._scopes():
            number, resets = limit.window(now)
            ttl = int(limit.period.total_seconds()) + 60
            plan.append(
                (scope, limit, f"llmapp:budget:{name}:{number}", int(worst * MICRO) or 1, ttl, resets)
            )
        return plan or None

    def reserve(self, request):
        """Reserve the most ``request`` can cost; return its Reservation, or the BudgetExceeded."""
        plan = self._plan(request)
        if plan is None:
            return Reservation(self.state, [])
        outcome = self.state.run_or_undo(
            lambda cache: _reserve(cache, plan), _unreserve, budget=_left(request)
        )
        return self._outcome(plan, outcome)

    async def areserve(self, request):
        plan = self._plan(request)
        if plan is None:
            return Reservation(self.state, [])
        outcome = await self.state.arun_or_undo(
            lambda cache: _reserve(cache, plan), _unreserve, budget=_left(request)
        )
        return self._outcome(plan, outcome)

    def _outcome(self, plan, outcome):
        if outcome is None:  # the cache failed: counted there; the call goes on
            return Reservation(self.state, [])
        if outcome[0] == "held":
            return Reservation(self.state, outcome[1])
        _, index, spent = outcome
        scope, limit, _, _, _, resets = plan[index]
        return BudgetExceeded(
            usecase=self.usecase,
            scope=scope,
            spent=Decimal(spent) / MICRO,
            limit=limit.usd,
            period=limit.period,
            resets_at=resets,
        )


def used(usecase, budget):
    """What use case ``usecase`` has spent of its Budget's own limit: (spent, limit, resets_at),
    or None when it has no such limit or the cache cannot say."""
    if budget is None or budget.total is None:
        return None
    number, resets = budget.total.window(clock())
    try:
        state = sharedstate.get(sharedstate.limits_alias(), "budgets")
    except ConfigurationError:
        return None
    spent = state.get(f"llmapp:budget:{usecase}:{number}", default=0)
    if not isinstance(spent, int):
        return None
    return Decimal(spent) / MICRO, budget.total.usd, resets


def _reserve(cache, plan):
    """Hold each scope's share, or none: ("held", [(key, micros, ttl)]) or ("exceeded", index, spent)."""
    held = []
    for index, (_, limit, key, micros, ttl, _) in enumerate(plan):
        total = increment(cache, key, micros, ttl)
        if total > limit.micros:
            increment(cache, key, -micros, ttl)
            for key_held, amount, ttl_held in held:
                increment(cache, key_held, -amount, ttl_held)
            return ("exceeded", index, total - micros)
        held.append((key, micros, ttl))
    return ("held", held)


def _unreserve(cache, outcome):
    """Give back what ``_reserve`` held, when its caller stopped waiting for it."""
    if outcome is not None and outcome[0] == "held":
        for key, micros, ttl in outcome[1]:
            increment(cache, key, -micros, ttl)


def _left(request):
    return request.deadline.left() if request.deadline is not None else None
