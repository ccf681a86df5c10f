"""A metrics backend that records metrics in memory, for tests.

Every metric is appended to :data:`sent` as ``(kind, key, value, tags)``: ``kind`` is
"incr", "timing" or "gauge", ``key`` carries the backend's prefix, ``tags`` includes
``instance`` as the tag "instance", and a sampled count is already scaled by
``1 / sample_rate``. Call :func:`reset` (or ``sent.clear()``) between tests and
``llmapp.metrics.flush()`` before looking, since metrics arrive from the worker thread.
"""

from llmapp.metrics.base import MetricsBackend

sent = []


def reset():
    """Forget every recorded metric."""
    sent.clear()


class LocmemMetricsBackend(MetricsBackend):
    """Append each metric to ``llmapp.metrics.locmem.sent``."""

    def incr(self, key, instance=None, tags=None, amount=1, sample_rate=1.0):
        if sample_rate < 1.0:
            amount = amount / sample_rate
        sent.append(("incr", self.get_key(key), amount, self.get_tags(instance, tags)))

    def timing(self, key, value, instance=None, tags=None, sample_rate=1.0):
        sent.append(("timing", self.get_key(key), value, self.get_tags(instance, tags)))

    def gauge(self, key, value, instance=None, tags=None, sample_rate=1.0):
        sent.append(("gauge", self.get_key(key), value, self.get_tags(instance, tags)))
