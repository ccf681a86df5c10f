"""A metrics backend that does nothing: the default."""

from llmapp.metrics.base import MetricsBackend


class DummyMetricsBackend(MetricsBackend):
    """Discard every metric."""

    def incr(self, key, instance=None, tags=None, amount=1, sample_rate=1.0):
        pass

    def timing(self, key, value, instance=None, tags=None, sample_rate=1.0):
        pass

    def gauge(self, key, value, instance=None, tags=None, sample_rate=1.0):
        pass
