from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

DEFAULT_WINDOW = timedelta(hours=24)


@dataclass(frozen=True)
class UsageSummary:
    """One use case's calls over a window."""

    usecase: str
    calls: int
    errors: int
    p50_ms: float | None
    p95_ms: float | None
    input_tokens: int
    output_tokens: int
    #: US dollars over the priced calls; None when none was priced.
    cost: Decimal | None = None
    #: Calls whose cost is unknown (a model with no price answered): not in ``cost``.
    unpriced: int = 0
    #: Calls answered from the response cache.
    cached: int = 0
    #: Calls a rate limit held back (RateLimited).
    throttled: int = 0

    @property
    def cache_hit_rate(self):
        return self.cached / self.calls if self.calls else 0.0

    @property
    def error_rate(self):
        return self.errors / self.calls if self.calls else 0.0


class TSDB:
    #: False where usage is not kept, so that pages can say "no data" rather than zero.
    has_data = True
    #: True when it reads the CompletionEvent rows the database event stream writes.
    reads_from_database = False

    def get_usage(self, usecases=None, window=DEFAULT_WINDOW):
        """Return {usecase: UsageSummary} for calls in the last ``window``."""
        raise NotImplementedError
