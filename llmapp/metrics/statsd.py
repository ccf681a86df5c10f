"""A metrics backend that sends DogStatsD datagrams over UDP."""

import errno
import socket
import time
from collections.abc import Mapping

from django.core import checks

from llmapp.metrics.base import MetricsBackend

# What would break a DogStatsD line: ":" ends the name, "|" starts a field, "," and
# "#" separate tags, a newline starts the next metric. Each becomes "_".
_NAME = str.maketrans(dict.fromkeys(":|@#,\r\n", "_"))
_TAG_KEY = str.maketrans(dict.fromkeys(":|#,\r\n", "_"))
_TAG_VALUE = str.maketrans(dict.fromkeys("|#,\r\n", "_"))
#: Seconds before a host that did not resolve is looked up again: a lookup may take
#: seconds, and each metric meanwhile fails at once instead.
RESOLVE_RETRY = 30.0


class StatsdMetricsBackend(MetricsBackend):
    """Send each metric as one DogStatsD datagram: ``name:value|c|@rate|#tag:value``.

    Counters are ``|c``, timings ``|ms`` (milliseconds), gauges ``|g``. The rate is
    passed on as ``|@rate`` for the agent to scale by. ``tags`` are added to every
    metric; a call's own tags win over them, and ``instance`` is sent as the tag
    "instance". The address is resolved on the first send, from the worker thread.
    """

    #: Where the retry of a failed lookup reads the time; tests give it a clock of their own.
    clock = staticmethod(time.monotonic)

    def __init__(self, host="127.0.0.1", port=8125, prefix="llmapp.", tags=None):
        super().__init__(prefix=prefix)
        self.host = host
        self.port = port
        self.tags = tags
        self._socket = None
        self._address = None
        self._lookup_error = None  # why the host did not resolve, until RESOLVE_RETRY has passed
        self._lookup_again = 0.0

    def incr(self, key, instance=None, tags=None, amount=1, sample_rate=1.0):
        self._send(self.format(key, amount, "c", instance, tags, sample_rate))

    def timing(self, key, value, instance=None, tags=None, sample_rate=1.0):
        self._send(self.format(key, value, "ms", instance, tags, sample_rate))

    def gauge(self, key, value, instance=None, tags=None, sample_rate=1.0):
        self._send(self.format(key, value, "g", instance, tags, sample_rate))

    def format(self, key, value, metric_type, instance=None, tags=None, sample_rate=1.0):
        """Return the datagram for one metric, as bytes."""
        line = f"{self.get_key(key).translate(_NAME)}:{_number(value)}|{metric_type}"
        if sample_rate < 1.0:
            line += f"|@{_number(sample_rate)}"
        tags = self.get_tags(instance, tags)
        if self.tags:
            tags = {**self.tags, **tags}
        if tags:
            line += "|#" + ",".join(_tag(k, v) for k, v in tags.items())
        return line.encode()

    def _send(self, datagram):
        if self._socket is None:
            self._connect()
        self._socket.sendto(datagram, self._address)

    def _connect(self):
        error = self._lookup_error
        if error is not None and self.clock() < self._lookup_again:
            raise type(error)(*error.args)
        try:
            family, _, _, _, address = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)[0]
        except OSError as e:
            self._lookup_error, self._lookup_again = e, self.clock() + RESOLVE_RETRY
            raise
        self._lookup_error = None
        sock = socket.socket(family, socket.SOCK_DGRAM)
        # A full send buffer raises (the worker logs it) instead of stalling the worker.
        sock.setblocking(False)
        self._socket, self._address = sock, address

    def describe_error(self, error):
        if isinstance(error, socket.gaierror):
            return (
                f"StatsdMetricsBackend cannot resolve the DogStatsD host {self.host!r} "
                f"({error.strerror or error}); metrics are dropped until it resolves. Set "
                "LLM_METRICS_OPTIONS['host'] (STATSD_HOST in the host project) to the agent's host name "
                "or address."
            )
        if error.errno == errno.EMSGSIZE:
            return (
                f"StatsdMetricsBackend dropped a metric too large for one UDP datagram ({error}); "
                "shorten its tags."
            )
        return (
            f"StatsdMetricsBackend cannot send to the DogStatsD agent at {self.host}:{self.port} ({error}); "
            "metrics are dropped meanwhile. Check LLM_METRICS_OPTIONS['host'] and ['port'] (STATSD_HOST "
            "and STATSD_PORT in the host project)."
        )

    def check(self):
        errors = []
        if not isinstance(self.host, str) or not self.host:
            errors.append(
                checks.Error(
                    f"LLM_METRICS_OPTIONS['host'] is {self.host!r}, not a host name.",
                    hint='Set it to the DogStatsD agent\'s host, e.g. "127.0.0.1".',
                    id="llmapp.metrics.E003",
                )
            )
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not (0 < self.port < 65536):
            errors.append(
                checks.Error(
                    f"LLM_METRICS_OPTIONS['port'] is {self.port!r}, not a port number.",
                    hint="Set it to the agent's UDP port, usually 8125.",
                    id="llmapp.metrics.E004",
                )
            )
        if self.tags is not None and not isinstance(self.tags, Mapping):
            errors.append(
                checks.Error(
                    f"LLM_METRICS_OPTIONS['tags'] is {self.tags!r}, not a dict.",
                    hint='Set it to a dict of constant tags, e.g. {"env": "prod"}.',
                    id="llmapp.metrics.E005",
                )
            )
        return errors


def _number(value):
    if isinstance(value, int):
        return str(int(value))  # int() turns True into 1
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def _tag(key, value):
    key = str(key).translate(_TAG_KEY)
    return key if value is None else f"{key}:{str(value).translate(_TAG_VALUE)}"
