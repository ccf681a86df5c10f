"""metrics.incr: the drop path with a stuck backend, and the normal path.

A stuck backend blocks the worker on its first metric; the queue (1,000 items here)
then fills and every further ``incr`` is dropped and counted. That path must cost
at most 5 µs and the queue must stay at its bound. The normal path (the default
dummy backend, its worker draining) is shown beside it, and an empty function of
the same signature is the floor both are read against.

The normal path is shown twice: in a tight loop, where the worker is busy anyway,
and one call at a time with the worker idle in between, as in a request or a
provider call. There the figure is CPU time, this process's, all threads: the
call, plus waking the worker and handing it the GIL.
"""

import threading
import time

from llmapp.metrics.base import MetricsBackend

from .harness import interleaved, median, setup_django
from .report import Result

NAME = "metrics"
TARGET_US = 5.0
QUEUE_SIZE = 1000
IDLE_GAP = 0.0002  # seconds between calls: the worker has drained the queue and waits
KEY = "complete_prompt.calls"
TAGS = {"usecase": "summarize", "provider": "openai", "model": "gpt-4o-mini", "status": "ok"}


class StuckBackend(MetricsBackend):
    """Block on every metric until ``release`` is set."""

    release = threading.Event()
    entered = threading.Event()

    def _block(self, *args, **kwargs):
        self.entered.set()
        self.release.wait()

    incr = timing = gauge = _block


def noop(key, instance=None, tags=None, amount=1, sample_rate=1.0):
    pass


def timed(function, calls):
    def run():
        started = time.perf_counter()
        for _ in range(calls):
            function(KEY, tags=TAGS)
        return (time.perf_counter() - started) / calls * 1e6

    return run


def idle_cpu(function, calls):
    """CPU µs per call when each call finds the worker idle (a short sleep between calls)."""

    def run():
        started = time.process_time()
        for _ in range(calls):
            function(KEY, tags=TAGS)
            time.sleep(IDLE_GAP)
        return (time.process_time() - started) / calls * 1e6

    return run


def bench(workspace, quick=False):
    setup_django(workspace)
    from django.test import override_settings

    from llmapp import metrics

    rounds = 5 if quick else 15
    calls = 20_000 if quick else 100_000
    normal_calls = 1_000  # per batch: fewer than the queue holds, so none is dropped

    def normal():
        figure = timed(metrics.incr, normal_calls)()
        metrics.flush()  # untimed: empty the queue for the next batch
        return figure

    with override_settings(LLM_METRICS_BACKEND="llmapp.metrics.dummy.DummyMetricsBackend"):
        dropped = metrics.dropped_count()
        normal_figures = interleaved({"normal": normal, "floor": timed(noop, normal_calls)}, rounds)
        idle_calls = 200 if quick else 500
        idle_figures = interleaved(
            {"idle": idle_cpu(metrics.incr, idle_calls), "floor": idle_cpu(noop, idle_calls)}, rounds
        )
        normal_dropped = metrics.dropped_count() - dropped

    StuckBackend.release.clear()
    StuckBackend.entered.clear()
    with override_settings(LLM_METRICS_BACKEND=f"{__name__}.StuckBackend", LLM_METRICS_QUEUE_SIZE=QUEUE_SIZE):
        try:
            metrics.incr(KEY, tags=TAGS)
            if not StuckBackend.entered.wait(5):
                raise RuntimeError("the metrics worker never reached the stuck backend")
            for _ in range(QUEUE_SIZE):  # fill the queue
                metrics.incr(KEY, tags=TAGS)
            queue = metrics._queue
            before = metrics.dropped_count()
            stuck_figures = interleaved(
                {"stuck": timed(metrics.incr, calls), "floor": timed(noop, calls)}, rounds
            )
            dropped = metrics.dropped_count() - before
            queued = queue.qsize()
            bounded = queue.maxsize == QUEUE_SIZE and queued <= QUEUE_SIZE
        finally:
            StuckBackend.release.set()

    stuck_us, floor_us = median(stuck_figures["stuck"]), median(stuck_figures["floor"])
    normal_us, normal_floor_us = median(normal_figures["normal"]), median(normal_figures["floor"])
    idle_us = median(idle_figures["idle"]) - median(idle_figures["floor"])
    expected_drops = rounds * calls
    return [
        Result(
            NAME,
            "incr, stuck backend, queue full (drop path)",
            stuck_us,
            floor_us,
            "µs",
            stuck_us,
            "µs",
            target=TARGET_US,
            notes=f"median of {rounds} batches of {calls:,} calls, interleaved with an empty "
            f"function of the same signature (the baseline)",
            extra={"stuck_us": stuck_figures["stuck"], "floor_us": stuck_figures["floor"]},
        ),
        Result(
            NAME,
            "queue bounded and every drop counted",
            queued,
            QUEUE_SIZE,
            "items",
            0 if bounded and dropped == expected_drops else 1,
            "",
            target=0,
            notes=f"queue holds {queued} of maxsize {queue.maxsize}; dropped_count() grew by "
            f"{dropped:,} for {expected_drops:,} calls (0 = both hold)",
            extra={
                "queued": queued,
                "maxsize": queue.maxsize,
                "dropped": dropped,
                "expected": expected_drops,
            },
        ),
        Result(
            NAME,
            "incr, dummy backend (normal path)",
            normal_us,
            normal_floor_us,
            "µs",
            normal_us,
            "µs",
            notes=f"median of {rounds} batches of {normal_calls:,} calls, the queue emptied between "
            f"batches; {normal_dropped} dropped",
            extra={"normal_us": normal_figures["normal"], "dropped": normal_dropped},
        ),
        Result(
            NAME,
            "incr, dummy backend, worker idle before each call (CPU)",
            median(idle_figures["idle"]),
            median(idle_figures["floor"]),
            "µs",
            idle_us,
            "µs",
            notes=f"median CPU time of {rounds} batches of {idle_calls} calls {IDLE_GAP * 1e6:.0f} µs apart, "
            "less the same loop calling an empty function (the baseline): what one metric costs the process",
            extra={"idle_cpu_us": idle_figures["idle"], "floor_cpu_us": idle_figures["floor"]},
        ),
    ]
