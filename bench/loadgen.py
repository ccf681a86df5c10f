"""Keep N keep-alive HTTP/1.1 connections busy against one URL for a bounded time.

    python -m bench.loadgen URL [--connections 50] [--duration 5] [--json BODY]

Every connection is opened first; then each sends a request (a GET, or a POST of
``--json``), reads the whole answer and sends the next, until ``--duration`` seconds
have passed. A request under way then is finished, not cut, so that the server never
sees a client go away mid-call and every answer it gave is counted. Prints one JSON
line: ``ok`` (200 answers), ``ok_in_window`` (those that came within the duration, the
rate's numerator), ``errors`` by kind, and latency percentiles in ms.

Raw asyncio streams, one process, no HTTP library: the client must cost the server
under test as little CPU as it can on a machine of two cores.
"""

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections import Counter
from urllib.parse import urlsplit


def request_bytes(url, body):
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    lines = [f"{'POST' if body is not None else 'GET'} {target} HTTP/1.1", f"Host: {parts.netloc}"]
    if body is not None:
        payload = body.encode()
        lines += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    else:
        payload = b""
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


async def read_response(reader):
    """Read one response; return its status and whether the connection stays open."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip().lower()
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)  # the chunk and its CRLF; "0\r\n\r\n" ends the body
            if size == 0:
                break
    return status, headers.get("connection") != "close"


class Load:
    def __init__(self, url, connections, duration, body):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port or 80
        self.request = request_bytes(url, body)
        self.connections = connections
        self.duration = duration
        self.ok = 0
        self.ok_in_window = 0
        self.errors = Counter()
        self.latencies = []
        self.go = asyncio.Event()
        self.deadline = None

    async def connect(self):
        return await asyncio.open_connection(self.host, self.port)

    async def worker(self, reader, writer):
        await self.go.wait()
        try:
            while time.perf_counter() < self.deadline:
                started = time.perf_counter()
                try:
                    writer.write(self.request)
                    status, keep_alive = await read_response(reader)
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    self.errors[type(exc).__name__] += 1
                    writer.close()
                    reader, writer = await self.connect()
                    continue
                finished = time.perf_counter()
                self.latencies.append(finished - started)
                if status == 200:
                    self.ok += 1
                    self.ok_in_window += finished <= self.deadline
                else:
                    self.errors[f"HTTP {status}"] += 1
                if not keep_alive:
                    writer.close()
                    reader, writer = await self.connect()
        finally:
            writer.close()

    async def run(self):
        streams = await asyncio.gather(*(self.connect() for _ in range(self.connections)))
        workers = [asyncio.create_task(self.worker(reader, writer)) for reader, writer in streams]
        await asyncio.sleep(0)  # every worker waits on go
        started = time.perf_counter()
        self.deadline = started + self.duration
        self.go.set()
        await asyncio.gather(*workers)
        elapsed = time.perf_counter() - started
        latencies = sorted(self.latencies) or [0.0]
        return {
            "ok": self.ok,
            "ok_in_window": self.ok_in_window,
            "duration": self.duration,
            "elapsed": elapsed,
            "rate": self.ok_in_window / self.duration,
            "errors": dict(self.errors),
            "p50_ms": statistics.median(latencies) * 1000,
            "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--json", dest="body", help="POST this JSON body instead of a GET.")
    options = parser.parse_args()
    load = Load(options.url, options.connections, options.duration, options.body)
    print(json.dumps(asyncio.run(load.run())), flush=True)


if __name__ == "__main__":
    sys.exit(main())
