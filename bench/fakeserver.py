"""Serve the tests' fake OpenAI server until standard input closes.

    python -m bench.fakeserver [--delay SECONDS (--replies N | --every)]

Prints its base URL on the first line; once stdin closes, prints how many chat
completions it served and exits. The first ``--replies`` answers each wait
``--delay`` seconds (the fake's ``hang``), any later ones answer at once; with
``--every``, every answer waits, however many there are (the web benchmark's
provider). Each connection has a thread of its own, so fifty concurrent requests
wait their delay side by side rather than in turn.
"""

import argparse
import sys

from tests.fakes import openai_server
from tests.fakes.openai_server import FakeOpenAIServer, RecordedRequest

# The fake writes a response's headers and body in separate sends; with Nagle's
# algorithm on, the body then waits for the client's delayed ACK, ~40 ms per call,
# which would drown every per-call figure. A real server sets TCP_NODELAY too.
openai_server._Handler.disable_nagle_algorithm = True
# socketserver listens with a backlog of 5: fifty clients connecting at once overflow
# it, and the kernel resets some of them ("Connection reset by peer").
openai_server._HTTPServer.request_queue_size = 1024


class SlowServer(FakeOpenAIServer):
    """The fake whose default answer (any not scripted) waits ``delay`` seconds."""

    def __init__(self, delay):
        super().__init__()
        self.delay = delay

    def _default_reply(self, delay=0.0):
        return super()._default_reply(delay=delay or self.delay)

    def _record(self, method, path, query, headers, body):
        # Tens of thousands of requests: keep what stop() counts, not every header and body.
        return RecordedRequest(method, path, {}, None)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--replies", type=int, default=0)
    parser.add_argument("--every", action="store_true", help="Every answer waits --delay seconds.")
    options = parser.parse_args()
    server = SlowServer(options.delay) if options.every else FakeOpenAIServer()
    with server:
        if options.delay > 0 and not options.every:
            for _ in range(options.replies):
                server.hang(options.delay)
        print(server.base_url, flush=True)
        sys.stdin.read()
        served = sum(1 for request in server.requests if request.path.endswith("/chat/completions"))
    print(served, flush=True)


if __name__ == "__main__":
    main()
