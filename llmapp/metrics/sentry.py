"""A metrics backend that sends llmapp's metrics to Sentry as trace metrics."""

from llmapp.metrics.base import MetricsBackend

# The SDK's own request counters: sending them to Sentry would make each envelope
# sent produce another one to send.
_SELF_REFERENTIAL_PREFIX = "internal."


class SentryMetricsBackend(MetricsBackend):
    """Forward each metric to ``sentry_sdk.metrics`` (count, distribution, gauge).

    Needs a configured Sentry SDK (``SENTRY_SDK_CONFIG`` with a DSN); without one the
    SDK drops the metrics. Tags become the metric's attributes.
    """

    def incr(self, key, instance=None, tags=None, amount=1, sample_rate=1.0):
        if key.startswith(_SELF_REFERENTIAL_PREFIX):
            return
        from sentry_sdk import metrics

        metrics.count(self.get_key(key), amount / sample_rate, attributes=self.get_tags(instance, tags))

    def timing(self, key, value, instance=None, tags=None, sample_rate=1.0):
        from sentry_sdk import metrics

        metrics.distribution(
            self.get_key(key), value, unit="millisecond", attributes=self.get_tags(instance, tags)
        )

    def gauge(self, key, value, instance=None, tags=None, sample_rate=1.0):
        from sentry_sdk import metrics

        metrics.gauge(self.get_key(key), value, attributes=self.get_tags(instance, tags))
