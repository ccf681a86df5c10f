"""Simulated time for the retry loop: ``simulated_time``, a fixture.

Every call's Attempts read ``llmapp.calls.retries.monotonic`` and wait with ``llmapp.calls.retries.sleep``
(``asleep`` on the event loop): replaced here by a clock that moves only when a call waits,
so a test of retries and deadlines neither sleeps nor depends on how loaded the machine is.
The HTTP exchanges themselves still run on real sockets, in real (and short) time.
"""

import asyncio

import pytest

from llmapp.calls import retries


class SimulatedTime:
    """A clock that a wait moves forward at once; ``waits`` lists the seconds each wait asked for."""

    def __init__(self):
        self.now = 1000.0
        self.waits = []

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        if seconds:
            self.waits.append(seconds)
            self.now += seconds

    async def asleep(self, seconds):
        self.sleep(seconds)
        await asyncio.sleep(0)


@pytest.fixture
def simulated_time(monkeypatch):
    time = SimulatedTime()
    monkeypatch.setattr(retries, "monotonic", time.monotonic)
    monkeypatch.setattr(retries, "sleep", time.sleep)
    monkeypatch.setattr(retries, "asleep", time.asleep)
    return time
