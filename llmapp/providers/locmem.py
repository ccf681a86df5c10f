"""The test provider: records every request and answers from a queue, like locmem email.

from llmapp.providers import locmem

locmem.queue("a canned answer")
locmem.queue(ProviderError("boom", provider="test", status_code=500))
complete_prompt("summarize", "hi", provider="test")
assert locmem.outbox[0].message == "hi"
"""

import collections
import json
import re
import threading

from llmapp.calls.types import evolve
from llmapp.providers.base import BaseProvider
from llmapp.providers.tokens import estimated_completion

#: Every CompletionRequest any locmem provider received, oldest first.
outbox = []
_replies = collections.deque()
_lock = threading.Lock()


def queue(*replies):
    """Queue replies for the next calls: a string answers, a dict or list answers as its JSON
    (a typed call's), an exception is raised."""
    with _lock:
        _replies.extend(json.dumps(reply) if isinstance(reply, dict | list) else reply for reply in replies)


def reset():
    """Empty the outbox and the queue of replies."""
    with _lock:
        outbox.clear()
        _replies.clear()


class LocmemProvider(BaseProvider):
    """Answer with queued replies, then with OPTIONS["response"] (default: an echo; for a typed
    call, the smallest value of its type). A request's ``schema`` is the one it asked for."""

    option_names = frozenset({"model", "response"})
    default_model = "locmem"
    output_modes = ("native",)

    def complete(self, request):
        # What was sent, without the call that sent it: the deadline is the call's Attempts,
        # whose routes and breakers a long outbox would keep alive (for the garbage collector
        # to walk again and again: 15 µs a call, measured over 20,000 calls).
        sent = request if request.deadline is None else evolve(request, deadline=None)
        with _lock:
            outbox.append(sent)
            reply = _replies.popleft() if _replies else None
        if isinstance(reply, BaseException):
            raise reply
        if reply is None:
            reply = self.options.get("response") or (
                request.output.minimal_text()
                if request.output is not None
                else f"locmem answer to: {request.message}"
            )
        return estimated_completion(self, request, reply)

    def pieces(self, completion):
        # stream() and astream() yield it word by word, spaces kept, so the chunks join back
        # to the exact text.
        return [piece for piece in re.split(r"(?<= )", completion.text) if piece] + [completion]

    def describe_request(self, request):
        output = request.output.wire_schema if request.output is not None else None
        return {"backend": "locmem (recorded in memory, nothing is sent)", **vars(request), "output": output}
