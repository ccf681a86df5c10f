"""One deadline per call, whatever the server sends: what the SDK providers wrap their calls in.

httpx's timeouts are per read: a server that sends a keep-alive now and then, or trickles
its answer a byte at a time, would keep a call going long past its deadline. So the sync
path checks the deadline as each piece of a body arrives (``hold_deadline``, a response
hook, for the call running in ``within()``), and the async path cuts every wait for a
chunk at it (``ChunkWaits``) and every whole answer (``asyncio.timeout(left(request))``).
"""

import asyncio
import contextvars
import functools

#: The deadline of the call whose SDK request is being sent in this context; see hold_deadline().
_sending = contextvars.ContextVar("llmapp_deadline", default=None)

#: What the waits for an SDK stream's next chunk return after its last.
END = object()


class ChunkWaits:
    """Cut each wait of an async stream for its next chunk at the call's deadline.

    What ``asyncio.timeout()`` does for one wait, for all the waits of a stream at the
    cost of one timer, not one per chunk. No timeout may span a yield of the stream: it
    would cancel whatever its caller awaits between two chunks. So the timer cancels the
    task only while it waits for a chunk; past the deadline, ``next()`` raises TimeoutError.
    """

    def __init__(self, deadline):
        self.deadline = deadline
        self.waiting = self.expired = self.cancelled = False

    def __enter__(self):
        if self.deadline is not None:
            self.task = asyncio.current_task()
            self.cancelling = self.task.cancelling()
            loop = asyncio.get_running_loop()
            self.timer = loop.call_at(loop.time() + self.deadline.left(), self._expire)
        return self

    def __exit__(self, *exc_info):
        if self.deadline is not None:
            self.timer.cancel()

    def _expire(self):
        self.expired = True
        if self.waiting:
            self.cancelled = True
            self.task.cancel()

    async def next(self, chunks):
        """Return the next chunk of the async iterator ``chunks``, or END after the last."""
        if self.expired:
            raise TimeoutError
        self.waiting = True
        try:
            return await anext(chunks, END)
        except asyncio.CancelledError:
            # As asyncio.timeout() does: any other cancellation of the task goes on.
            if self.cancelled and self.task.uncancel() <= self.cancelling:
                raise TimeoutError from None
            raise
        finally:
            self.waiting = False


def within(deadline, call, *args):
    """Return ``call(*args)``, the sync SDK's responses held to ``deadline`` meanwhile (hold_deadline)."""
    sending = _sending.set(deadline)
    try:
        return call(*args)
    finally:
        _sending.reset(sending)


def left(request):
    """Return the seconds left of ``request``'s call deadline, or None when it has none."""
    return None if request.deadline is None else request.deadline.left()


def hold_deadline(response):
    """Bind the call's deadline to the body of ``response``: a sync HTTP client's response hook.

    httpx's read timeout is per read: a server that trickles its answer, never idle that
    long, would keep a call going long past its deadline. This hook checks the deadline once
    the headers are in, and the body as each piece of it arrives: past the deadline, they
    raise its ProviderTimeout, which the SDKs let through as it is.
    """
    deadline = _sending.get()
    if deadline is not None:
        deadline.check_deadline()
        response.stream = _deadline_body(type(response.stream))(response.stream, deadline)


@functools.cache
def _deadline_body(stream_class):
    """Return the DeadlineBody class for ``stream_class``'s HTTP library (httpx or httpx2)."""
    # The library checks that a body is one of its own SyncByteStreams.
    (byte_stream,) = [cls for cls in stream_class.__mro__ if cls.__name__ == "SyncByteStream"]
    return type("DeadlineBody", (DeadlineBody, byte_stream), {})


class DeadlineBody:
    """A response body that raises the call's ProviderTimeout once its deadline has passed."""

    def __init__(self, body, deadline):
        self.body = body
        self.deadline = deadline

    @property
    def elapsed(self):
        # The HTTP library reads the response's elapsed time from its body.
        return getattr(self.body, "elapsed", None)

    def __iter__(self):
        for piece in self.body:
            self.deadline.check_deadline()
            yield piece

    def close(self):
        self.body.close()
