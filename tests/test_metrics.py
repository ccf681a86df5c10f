import os
import random
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from llmapp import metrics
from llmapp.exceptions import ConfigurationError
from llmapp.metrics import locmem
from llmapp.metrics.base import MetricsBackend
from llmapp.metrics.checks import check_metrics
from llmapp.metrics.dummy import DummyMetricsBackend
from llmapp.metrics.statsd import StatsdMetricsBackend

PROJECT_DIR = Path(__file__).resolve().parent.parent


class BlockingBackend(MetricsBackend):
    """Block on the first metric until ``release`` is set, then count what arrives."""

    entered = threading.Event()
    release = threading.Event()
    received = []

    @classmethod
    def reset(cls):
        cls.entered.clear()
        cls.release.clear()
        cls.received.clear()

    def incr(self, key, instance=None, tags=None, amount=1, sample_rate=1.0):
        self.entered.set()
        self.release.wait()
        self.received.append(key)


class FailingBackend(MetricsBackend):
    """Raise on the key "boom", record every other key in locmem."""

    def incr(self, key, instance=None, tags=None, amount=1, sample_rate=1.0):
        if key == "boom":
            raise RuntimeError("backend is broken")
        locmem.sent.append(("incr", self.get_key(key), amount, self.get_tags(instance, tags)))


@pytest.fixture(autouse=True)
def _clean():
    locmem.reset()
    BlockingBackend.reset()
    yield
    BlockingBackend.release.set()  # never leave a worker stuck for the next test
    locmem.reset()


@pytest.fixture
def udp_server():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2)
    yield sock
    sock.close()


@pytest.fixture
def use_statsd(settings, udp_server):
    settings.LLM_METRICS_BACKEND = "llmapp.metrics.statsd.StatsdMetricsBackend"
    settings.LLM_METRICS_OPTIONS = {"port": udp_server.getsockname()[1], "tags": {"env": "test"}}
    return udp_server


@pytest.fixture
def use_locmem(settings):
    settings.LLM_METRICS_BACKEND = "llmapp.metrics.locmem.LocmemMetricsBackend"
    settings.LLM_METRICS_OPTIONS = {"prefix": ""}


def receive(sock, count):
    return [sock.recv(65535) for _ in range(count)]


# --- statsd ----------------------------------------------------------------------------


def test_statsd_sends_dogstatsd_datagrams(use_statsd):
    metrics.incr("requests", instance="openai", tags={"usecase": "summarize"})
    metrics.incr("tokens", amount=42)
    metrics.timing("latency", 12.5, tags={"provider": "openai"})
    metrics.gauge("queue.depth", 7)
    assert metrics.flush()

    assert receive(use_statsd, 4) == [
        b"llmapp.requests:1|c|#env:test,usecase:summarize,instance:openai",
        b"llmapp.tokens:42|c|#env:test",
        b"llmapp.latency:12.5|ms|#env:test,provider:openai",
        b"llmapp.queue.depth:7|g|#env:test",
    ]


def test_statsd_passes_the_sample_rate_on(udp_server):
    backend = StatsdMetricsBackend(port=udp_server.getsockname()[1], prefix="")
    backend.incr("requests", tags={"usecase": "summarize"}, sample_rate=0.25)
    backend.timing("latency", 3, sample_rate=0.5)
    backend.gauge("depth", 1.0)

    assert receive(udp_server, 3) == [
        b"requests:1|c|@0.25|#usecase:summarize",
        b"latency:3|ms|@0.5",
        b"depth:1|g",
    ]


def test_statsd_sampled_call_through_the_public_api(use_statsd):
    state = random.getstate()
    try:
        random.seed(1)
        assert random.random() < 0.5  # so the next seed(1) keeps the metric
        random.seed(1)
        metrics.incr("sampled", sample_rate=0.5)
    finally:
        random.setstate(state)
    assert metrics.flush()

    assert receive(use_statsd, 1) == [b"llmapp.sampled:1|c|@0.5|#env:test"]


def test_statsd_sanitizes_names_and_tags():
    backend = StatsdMetricsBackend(prefix="", tags={"con|st": "a,b"})
    datagram = backend.format(
        "bad:name|x\n", 1, "c", instance="in#st", tags={"k:e,y": "v|a:l\nue", "bare": None}
    )

    assert datagram == b"bad_name_x_:1|c|#con_st:a_b,k_e_y:v_a:l_ue,bare,instance:in_st"


def test_statsd_call_tags_override_constant_tags():
    backend = StatsdMetricsBackend(prefix="", tags={"env": "prod", "region": "eu"})

    assert backend.format("n", 1, "c", tags={"env": "canary"}) == b"n:1|c|#env:canary,region:eu"


def test_statsd_check_reports_bad_options():
    backend = StatsdMetricsBackend(host="", port=70000, tags=["env:prod"])

    assert [e.id for e in backend.check()] == [
        "llmapp.metrics.E003",
        "llmapp.metrics.E004",
        "llmapp.metrics.E005",
    ]
    assert StatsdMetricsBackend().check() == []


# --- the queue -------------------------------------------------------------------------


def test_incr_never_blocks_on_a_stuck_backend(settings):
    settings.LLM_METRICS_QUEUE_SIZE = 100
    settings.LLM_METRICS_BACKEND = "tests.test_metrics.BlockingBackend"

    metrics.incr("first")
    assert BlockingBackend.entered.wait(2)  # the worker is now stuck, the queue empty
    dropped_before = metrics.dropped_count()
    queue = metrics._queue
    largest = 0

    for _ in range(10_000):
        metrics.incr("stuck")
        largest = max(largest, queue.qsize())

    assert not BlockingBackend.release.is_set()  # every call returned while it was stuck
    assert queue.maxsize == 100
    assert largest == 100
    assert metrics.dropped_count() - dropped_before == 10_000 - 100
    assert not metrics.flush(timeout=0.05)  # a stuck backend bounds flush, too

    BlockingBackend.release.set()
    assert metrics.flush()
    assert BlockingBackend.received == ["first"] + ["stuck"] * 100


def test_a_failing_backend_does_not_kill_the_worker(settings, caplog):
    settings.LLM_METRICS_BACKEND = "tests.test_metrics.FailingBackend"

    metrics.incr("boom")
    metrics.incr("boom")
    metrics.incr("after")
    assert metrics.flush()

    assert locmem.sent == [("incr", "llmapp.after", 1, {})]
    assert metrics._worker.thread.is_alive()
    errors = [r for r in caplog.records if r.name == "llmapp.metrics"]
    assert len(errors) == 1  # the second failure within a minute is counted, not logged
    assert "FailingBackend failed to send incr 'boom'" in errors[0].getMessage()
    assert errors[0].exc_info[0] is RuntimeError


def test_flush_without_metrics_returns_at_once(settings):
    settings.LLM_METRICS_BACKEND = "llmapp.metrics.locmem.LocmemMetricsBackend"

    assert metrics.flush(timeout=0)


# --- sampling --------------------------------------------------------------------------


def test_sampling_scales_counts_by_the_rate(use_locmem):
    state = random.getstate()
    try:
        random.seed(1234)
        kept = sum(random.random() < 0.5 for _ in range(1000))
        random.seed(1234)
        for _ in range(1000):
            metrics.incr("sampled", sample_rate=0.5)
    finally:
        random.setstate(state)
    for _ in range(10):
        metrics.incr("unsampled")
        metrics.incr("never", sample_rate=0.0)
    assert metrics.flush()

    sampled = [value for _, key, value, _ in locmem.sent if key == "sampled"]
    assert 0 < kept < 1000
    assert sampled == [2.0] * kept
    assert [v for _, k, v, _ in locmem.sent if k == "unsampled"] == [1] * 10
    assert not [m for m in locmem.sent if m[1] == "never"]


def test_timing_and_gauge_are_sampled_but_not_scaled(use_locmem):
    state = random.getstate()
    try:
        random.seed(1)
        assert random.random() < 0.5
        random.seed(1)
        metrics.timing("latency", 250, sample_rate=0.5)
    finally:
        random.setstate(state)
    metrics.gauge("depth", 3, instance="q1")
    assert metrics.flush()

    assert locmem.sent == [
        ("timing", "latency", 250, {}),
        ("gauge", "depth", 3, {"instance": "q1"}),
    ]


def test_tags_are_copied_on_the_callers_thread(use_locmem):
    tags = {"usecase": "summarize"}
    metrics.incr("requests", tags=tags)
    tags["usecase"] = "changed"
    assert metrics.flush()

    assert locmem.sent == [("incr", "requests", 1, {"usecase": "summarize"})]


# --- other backends --------------------------------------------------------------------


def test_logging_backend_logs_each_metric(settings, caplog):
    settings.LLM_METRICS_BACKEND = "llmapp.metrics.logging.LoggingMetricsBackend"
    settings.LLM_METRICS_OPTIONS = {"level": "INFO"}
    caplog.set_level("INFO", logger="llmapp.metrics")

    metrics.incr("requests", instance="openai", amount=3, sample_rate=1.0)
    metrics.timing("latency", 12)
    assert metrics.flush()

    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "incr llmapp.requests 3 tags={'instance': 'openai'}"),
        ("INFO", "timing llmapp.latency 12 tags={}"),
    ]


def test_logging_backend_checks_its_level(settings):
    settings.LLM_METRICS_BACKEND = "llmapp.metrics.logging.LoggingMetricsBackend"
    settings.LLM_METRICS_OPTIONS = {"level": "LOUD"}

    assert [e.id for e in check_metrics()] == ["llmapp.metrics.E006"]


def test_dummy_is_the_default_and_checks_clean():
    assert isinstance(metrics.get_backend(), DummyMetricsBackend)
    assert check_metrics() == []


# --- settings --------------------------------------------------------------------------


def test_switching_the_backend_in_settings_takes_effect(settings, udp_server):
    settings.LLM_METRICS_BACKEND = "llmapp.metrics.locmem.LocmemMetricsBackend"
    metrics.incr("to.locmem")
    assert metrics.flush()
    assert locmem.sent == [("incr", "llmapp.to.locmem", 1, {})]

    settings.LLM_METRICS_BACKEND = "llmapp.metrics.statsd.StatsdMetricsBackend"
    settings.LLM_METRICS_OPTIONS = {"port": udp_server.getsockname()[1]}
    assert isinstance(metrics.get_backend(), StatsdMetricsBackend)
    metrics.incr("to.statsd")
    assert metrics.flush()

    assert receive(udp_server, 1) == [b"llmapp.to.statsd:1|c"]
    assert locmem.sent == [("incr", "llmapp.to.locmem", 1, {})]


def test_metrics_queued_before_a_switch_reach_the_old_backend(settings):
    settings.LLM_METRICS_BACKEND = "llmapp.metrics.locmem.LocmemMetricsBackend"
    for _ in range(1000):
        metrics.incr("before")  # no flush

    settings.LLM_METRICS_BACKEND = "llmapp.metrics.dummy.DummyMetricsBackend"

    assert len(locmem.sent) == 1000


@pytest.mark.parametrize(
    ("backend", "options", "message"),
    [
        ("llmapp.metrics.nope.NopeBackend", {}, "could not be imported"),
        ("llmapp.conf.get_setting", {}, "not a subclass"),
        ("llmapp.metrics.statsd.StatsdMetricsBackend", {"hots": "x"}, "do not fit"),
        ("llmapp.metrics.statsd.StatsdMetricsBackend", ["x"], "dict of keyword arguments"),
    ],
    ids=["unimportable", "not-a-backend", "unknown-option", "options-not-a-dict"],
)
def test_a_bad_backend_setting_is_reported_and_metrics_are_discarded(
    settings, caplog, backend, options, message
):
    settings.LLM_METRICS_BACKEND = backend
    settings.LLM_METRICS_OPTIONS = options

    with pytest.raises(ConfigurationError, match=message):
        metrics.get_backend()
    assert [e.id for e in check_metrics()] == ["llmapp.metrics.E001"]
    metrics.incr("ignored")  # does not raise
    assert metrics.flush()
    assert "metrics backend cannot be built" in caplog.text


def test_a_bad_queue_size_is_reported_and_the_queue_stays_bounded(settings):
    settings.LLM_METRICS_QUEUE_SIZE = 0

    assert [e.id for e in check_metrics()] == ["llmapp.metrics.E002"]
    metrics.incr("bounded")
    assert metrics._queue.maxsize == 10_000


# --- processes -------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork() is not available here")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")  # the point
def test_a_forked_child_emits_metrics(use_statsd):
    metrics.incr("parent")  # the parent's worker thread exists before the fork
    assert metrics.flush()
    assert receive(use_statsd, 1) == [b"llmapp.parent:1|c|#env:test"]

    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        status = 1
        try:
            metrics.incr("child")
            status = 0 if metrics.flush(timeout=2) else 1
        finally:
            os._exit(status)

    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert receive(use_statsd, 1) == [b"llmapp.child:1|c|#env:test"]


EXIT_SCRIPT = """
import sys
from django.conf import settings
settings.configure(
    LLM_METRICS_BACKEND=sys.argv[1],
    LLM_METRICS_OPTIONS={"port": int(sys.argv[2])} if sys.argv[2] else {},
)
from llmapp import metrics
for _ in range(3):
    metrics.incr("at.exit")
"""


def run_and_exit(backend, port="", timeout=20):
    """Run a process that records a metric and exits; it must be gone within ``timeout``."""
    result = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, backend, str(port)],
        cwd=PROJECT_DIR,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()


def test_metrics_are_flushed_at_exit(udp_server):
    run_and_exit("llmapp.metrics.statsd.StatsdMetricsBackend", udp_server.getsockname()[1])

    assert receive(udp_server, 3) == [b"llmapp.at.exit:1|c"] * 3


def test_exit_does_not_hang_on_a_stuck_backend():
    # BlockingBackend never gets its release in the child process.
    # Its flush at exit has a budget of its own (2 s): a hang would outlive the timeout.
    run_and_exit("tests.test_metrics.BlockingBackend", timeout=10)
