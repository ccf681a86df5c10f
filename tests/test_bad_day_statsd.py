"""A bad day for statsd: a host that does not resolve, a datagram the socket refuses.

A metric that cannot be sent is dropped and counted; the failure is one log line that
says what to fix (no traceback: the network is no bug), at most once a minute.
(What a user of manage.py sees is in tests/test_bad_day.py.)
"""

import socket
import threading

import pytest

from llmapp import metrics
from llmapp.metrics import statsd
from llmapp.metrics.statsd import StatsdMetricsBackend

UNRESOLVABLE = "no-such-host.invalid"  # .invalid never resolves (RFC 6761)


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def udp_server():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(2)
        yield sock


def metrics_log(caplog):
    return [record for record in caplog.records if record.name == "llmapp.metrics"]


def test_an_unresolvable_host_is_one_line_and_every_lost_metric_is_counted(settings, caplog):
    assert metrics.flush()  # what earlier tests emitted goes to their backend, not this one
    settings.LLM_METRICS_BACKEND = "llmapp.metrics.statsd.StatsdMetricsBackend"
    settings.LLM_METRICS_OPTIONS = {"host": UNRESOLVABLE}
    failed_before = metrics.failed_count()

    for _ in range(5):
        metrics.incr("calls")
    assert metrics.flush()

    # At least: a thread an earlier test left (a usage writer counting a drop) may add its own.
    assert metrics.failed_count() - failed_before >= 5
    [record] = metrics_log(caplog)
    assert record.exc_info is None
    assert f"cannot resolve the DogStatsD host {UNRESOLVABLE!r}" in record.message
    assert "Set LLM_METRICS_OPTIONS['host'] (STATSD_HOST in the host project)" in record.message


def test_a_host_that_did_not_resolve_is_looked_up_again_only_after_a_while(monkeypatch):
    lookups = []
    real_getaddrinfo = socket.getaddrinfo
    this_thread = threading.current_thread()

    def counted_getaddrinfo(*args, **kwargs):
        # The backend's, on this thread: a thread an earlier test left (a Sentry transport's
        # retries, say) may look up hosts of its own meanwhile.
        if threading.current_thread() is this_thread:
            lookups.append(args[0])
        return real_getaddrinfo(*args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", counted_getaddrinfo)
    backend = StatsdMetricsBackend(host=UNRESOLVABLE)
    backend.clock = clock = FakeClock()

    for _ in range(3):
        with pytest.raises(socket.gaierror):
            backend.incr("calls")
    assert lookups == [UNRESOLVABLE]  # a lookup may take seconds: not one per metric

    clock.now += statsd.RESOLVE_RETRY
    with pytest.raises(socket.gaierror):
        backend.incr("calls")
    assert lookups == [UNRESOLVABLE] * 2


def test_a_datagram_the_socket_refuses_is_dropped_and_the_next_one_is_sent(settings, udp_server, caplog):
    settings.LLM_METRICS_BACKEND = "llmapp.metrics.statsd.StatsdMetricsBackend"
    settings.LLM_METRICS_OPTIONS = {"port": udp_server.getsockname()[1]}
    failed_before = metrics.failed_count()

    metrics.incr("huge", tags={"blob": "x" * 70_000})  # more than a UDP datagram holds
    metrics.incr("small")
    assert metrics.flush()

    assert udp_server.recv(65535) == b"llmapp.small:1|c"
    assert metrics.failed_count() - failed_before == 1
    [record] = metrics_log(caplog)
    assert record.exc_info is None
    assert "dropped a metric too large for one UDP datagram" in record.message
