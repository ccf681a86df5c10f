"""The system check of the metrics service."""

from django.core import checks

from llmapp import conf
from llmapp.exceptions import ConfigurationError
from llmapp.metrics import get_backend


def check_metrics(app_configs=None, **kwargs):
    """Check that the metrics backend can be built and that its options are valid."""
    errors = []
    try:
        errors.extend(get_backend().check())
    except ConfigurationError as e:
        errors.append(
            checks.Error(
                str(e),
                hint="Set LLM_METRICS_BACKEND to the import path of a MetricsBackend, e.g. "
                '"llmapp.metrics.statsd.StatsdMetricsBackend", and LLM_METRICS_OPTIONS '
                "to its keyword arguments.",
                id="llmapp.metrics.E001",
            )
        )
    size = conf.get_setting("LLM_METRICS_QUEUE_SIZE")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        errors.append(
            checks.Error(
                f"LLM_METRICS_QUEUE_SIZE is {size!r}, not a positive integer.",
                hint="Set it to how many metrics may wait for the backend, e.g. 10000.",
                id="llmapp.metrics.E002",
            )
        )
    return errors
