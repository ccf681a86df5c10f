"""Turn llmapp's data into text for admin pages: secrets scrubbed, numbers formatted."""

from llmapp.calls.spend.budgets import used
from llmapp.calls.spend.cost import dollars
from llmapp.exceptions import ConfigurationError
from llmapp.sentry.scrubbing import scrub

NO_VALUE = "—"


def safe(value):
    """Return ``value`` with every secret this process knows masked, at any depth.

    Stored events are scrubbed when recorded; this scrubs again when shown, so a
    key configured after an event was recorded still never reaches a page.
    """
    return scrub(value)


def milliseconds(value):
    # A no-break space keeps "618.2 ms" on one line in narrow columns.
    return NO_VALUE if value is None else f"{value:,.1f}\u00a0ms"


def count(value):
    return NO_VALUE if value is None else f"{value:,}"


def percent(value):
    return f"{value:.1%}"


def usage_cells(summary):
    """Return the usage figures of one use case as display strings."""
    if summary is None:
        return {
            "calls": "0",
            "error_rate": NO_VALUE,
            "p50": NO_VALUE,
            "p95": NO_VALUE,
            "input_tokens": "0",
            "output_tokens": "0",
            "cost": NO_VALUE,
            "cache_hits": NO_VALUE,
            "throttled": "0",
        }
    return {
        "calls": count(summary.calls),
        "error_rate": percent(summary.error_rate),
        "p50": milliseconds(summary.p50_ms),
        "p95": milliseconds(summary.p95_ms),
        "input_tokens": count(summary.input_tokens),
        "output_tokens": count(summary.output_tokens),
        "cost": dollars(summary.cost, summary.unpriced, NO_VALUE),
        "cache_hits": percent(summary.cache_hit_rate) if summary.cached else NO_VALUE,
        "throttled": count(summary.throttled),
    }


def budget_display(usecase):
    """A use case's budget as pages show it: spent of limit, the share, when it resets; or None."""
    try:
        budget = usecase.budget_spec
    except ConfigurationError:
        return None
    figures = used(usecase.name, budget)
    if figures is None:
        return None
    spent, limit, resets = figures
    share = percent(spent / limit) if limit else NO_VALUE
    return {
        "share": share,
        "text": f"{dollars(spent)} of {dollars(limit)} ({share}); resets {resets:%Y-%m-%d %H:%M} UTC",
    }
