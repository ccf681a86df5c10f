"""A metrics backend that logs every metric; handy in development."""

import logging

from django.core import checks

from llmapp.metrics.base import MetricsBackend

logger = logging.getLogger("llmapp.metrics")


class LoggingMetricsBackend(MetricsBackend):
    """Log each metric on the "llmapp.metrics" logger at ``level`` (DEBUG by default).

    A sampled count is logged scaled by ``1 / sample_rate``, i.e. as the estimate of
    the true count.
    """

    def __init__(self, prefix="llmapp.", level="DEBUG"):
        super().__init__(prefix=prefix)
        self.level = level
        self.levelno = _levelno(level)

    def incr(self, key, instance=None, tags=None, amount=1, sample_rate=1.0):
        if sample_rate < 1.0:
            amount = amount / sample_rate
        self._log("incr", key, amount, instance, tags)

    def timing(self, key, value, instance=None, tags=None, sample_rate=1.0):
        self._log("timing", key, value, instance, tags)

    def gauge(self, key, value, instance=None, tags=None, sample_rate=1.0):
        self._log("gauge", key, value, instance, tags)

    def _log(self, kind, key, value, instance, tags):
        if logger.isEnabledFor(self.levelno):
            tags = self.get_tags(instance, tags)
            logger.log(self.levelno, "%s %s %s tags=%r", kind, self.get_key(key), value, tags)

    def check(self):
        if _levelno(self.level, default=None) is None:
            return [
                checks.Error(
                    f"LLM_METRICS_OPTIONS['level'] is {self.level!r}, not a logging level.",
                    hint='Use a level name such as "DEBUG" or "INFO", or its number.',
                    id="llmapp.metrics.E006",
                )
            ]
        return []


def _levelno(level, default=logging.DEBUG):
    if isinstance(level, int) and not isinstance(level, bool):
        return level
    number = logging.getLevelName(str(level).upper())
    return number if isinstance(number, int) else default
