"""The base class of metrics backends."""


class MetricsBackend:
    """Send metrics somewhere; subclasses implement incr, timing and gauge.

    The methods run on the metrics worker thread, never on the caller's, so they may
    format strings, block briefly and raise (the worker logs the error and carries on).
    ``sample_rate`` is the rate the caller already sampled at: a backend either scales
    counts by ``1 / sample_rate`` itself or passes the rate on (statsd's ``|@rate``).
    Options come from ``LLM_METRICS_OPTIONS`` as keyword arguments; validate them in
    ``check()`` rather than in ``__init__`` so a typo shows up as a check message.
    """

    def __init__(self, prefix="llmapp."):
        self.prefix = prefix or ""

    def get_key(self, key):
        """Return ``key`` with this backend's prefix."""
        return f"{self.prefix}{key}"

    def get_tags(self, instance, tags):
        """Return the call's tags as a new dict, with ``instance`` as the tag "instance"."""
        tags = dict(tags) if tags else {}
        if instance:
            tags["instance"] = instance
        return tags

    def incr(self, key, instance=None, tags=None, amount=1, sample_rate=1.0):
        raise NotImplementedError

    def timing(self, key, value, instance=None, tags=None, sample_rate=1.0):
        """Record a duration of ``value`` milliseconds."""
        raise NotImplementedError

    def gauge(self, key, value, instance=None, tags=None, sample_rate=1.0):
        raise NotImplementedError

    def describe_error(self, error):
        """Return one line on why a metric could not be sent (an OSError) and what to fix.

        The worker logs it without a traceback: a network failure is no bug in the code.
        """
        return f"{type(self).__name__} cannot send metrics ({error}); they are dropped meanwhile."

    def check(self):
        """Return Django check messages about this backend's options; none by default."""
        return []
