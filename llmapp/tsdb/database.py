import math

from django.db.models import Count, Q, Sum
from django.utils import timezone

from llmapp.tsdb.base import DEFAULT_WINDOW, TSDB, UsageSummary


class DatabaseTSDB(TSDB):
    """Aggregate CompletionEvent rows; percentiles by nearest rank, one row fetched each."""

    reads_from_database = True

    def get_usage(self, usecases=None, window=DEFAULT_WINDOW):
        from llmapp.models import CompletionEvent

        events = CompletionEvent.objects.filter(created_at__gte=timezone.now() - window)
        if usecases is not None:
            events = events.filter(usecase__in=list(usecases))
        totals = (
            events.order_by()
            .values("usecase")
            .annotate(
                calls=Count("id"),
                # A refusal is a call that did not answer too.
                errors=Count("id", filter=~Q(status=CompletionEvent.Status.OK)),
                input_tokens=Sum("input_tokens"),
                output_tokens=Sum("output_tokens"),
                total_cost=Sum("cost"),
                unpriced=Count("id", filter=Q(cost__isnull=True)),
                hits=Count("id", filter=Q(cached=True)),
                throttled=Count("id", filter=Q(error_type="RateLimited")),
            )
        )
        usage = {}
        for row in totals:
            latencies = events.filter(usecase=row["usecase"]).order_by("latency_ms")
            usage[row["usecase"]] = UsageSummary(
                usecase=row["usecase"],
                calls=row["calls"],
                errors=row["errors"],
                p50_ms=_percentile(latencies, row["calls"], 0.50),
                p95_ms=_percentile(latencies, row["calls"], 0.95),
                input_tokens=row["input_tokens"] or 0,
                output_tokens=row["output_tokens"] or 0,
                cost=row["total_cost"],
                unpriced=row["unpriced"],
                cached=row["hits"],
                throttled=row["throttled"],
            )
        return usage


def _percentile(ordered, count, fraction):
    # Nearest rank: the smallest value with at least `fraction` of the values at or below it.
    rank = max(1, math.ceil(fraction * count))
    return ordered.values_list("latency_ms", flat=True)[rank - 1]
