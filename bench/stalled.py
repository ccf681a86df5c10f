"""A stalled usage database: `llm summarize --timeout 2` must answer and exit within 3 s.

The command runs as a user runs it (settings.dev, the preview provider, the default
``database`` event stream), timed from its start until its process exits, its answer
read as it is printed:

- SQLite, locked: another process holds ``BEGIN EXCLUSIVE`` on the usage file;
- PostgreSQL, hung: ``DATABASE_URL`` points at a local TCP listener that accepts
  connections and never answers (a black hole), rather than at a hung real server,
  which is shared.

The baseline is the same command on a SQLite file nobody holds. A command still
running after 10 s is killed, and its row MISSED.
"""

import contextlib
import socket
import subprocess
import sys
import threading
import time

from .harness import MANAGE, MESSAGE, Database, spawn, stop
from .report import Result

NAME = "stalled"
TARGET_S = 3.0
KILL_AFTER_S = 10.0
ANSWER = "preview answer"

# Holds the write lock of the SQLite file in argv[1] until its stdin closes.
LOCKER = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
"""


class BlackHole:
    """A TCP listener on 127.0.0.1 that accepts every connection and never reads or answers."""

    def __init__(self):
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.accepted = []
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="bench-black-hole", daemon=True)
        self._thread.start()

    def _accept(self):
        while not self._closing.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                connection, _ = self.listener.accept()
                self.accepted.append(connection)

    def close(self):
        self._closing.set()
        self._thread.join()
        self.listener.close()
        for connection in self.accepted:
            connection.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


@contextlib.contextmanager
def locked(path):
    """Hold the write lock of the SQLite file ``path`` from another process."""
    locker = spawn(
        [sys.executable, "-c", LOCKER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        if locker.stdout.readline().strip() != "locked":
            raise RuntimeError("the process meant to lock the SQLite file did not lock it")
        yield
    finally:
        with contextlib.suppress(BrokenPipeError):
            locker.stdin.close()
        stop(locker, grace=5.0)


def summarize(env):
    """Run `llm summarize --timeout 2`; return seconds to exit and to the answer (or None), and stderr."""
    args = [sys.executable, str(MANAGE), "llm", "summarize", "--message", MESSAGE, "--timeout", "2"]
    started = time.perf_counter()
    process = spawn(args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    answered = []
    output = []

    def read(stream, keep):
        for line in iter(stream.readline, b""):
            text = line.decode(errors="replace")
            if not answered and ANSWER in text:
                answered.append(time.perf_counter() - started)
            keep.append(text)

    errors = []
    readers = [
        threading.Thread(target=read, args=(process.stdout, output), daemon=True),
        threading.Thread(target=read, args=(process.stderr, errors), daemon=True),
    ]
    for reader in readers:
        reader.start()
    try:
        process.wait(timeout=KILL_AFTER_S)
        exited = time.perf_counter() - started
    except subprocess.TimeoutExpired:
        exited = None
    finally:
        stop(process, grace=0)
    for reader in readers:
        reader.join(timeout=5)
    return exited, answered[0] if answered else None, "".join(errors).strip()


def bench(workspace, quick=False):
    env = workspace.env
    baseline, _, log = summarize(env(workspace.fresh_database("stalled-free")))
    if baseline is None:
        raise RuntimeError(f"llm summarize did not finish on a free SQLite file:\n{log}")
    results = []
    locked_file = workspace.fresh_database("stalled-locked")
    with locked(locked_file):
        results.append(_result("SQLite file locked by another writer", summarize(env(locked_file)), baseline))
    with BlackHole() as hole:
        url = f"postgres://postgres@127.0.0.1:{hole.port}/llmapp_bench_black_hole"
        results.append(
            _result(
                "PostgreSQL hung (a listener that never answers)",
                summarize(env(Database("PostgreSQL", url))),
                baseline,
            )
        )
    return results


def _result(case, outcome, baseline):
    exited, answered, log = outcome
    if exited is None:
        happened = f"still running after {KILL_AFTER_S:g} s, killed"
    else:
        happened = f"exited after {exited:.2f} s"
    if answered is None:
        happened += "; no answer printed"
    else:
        happened = f"answer printed after {answered:.2f} s, {happened}"
    # A run killed, or that printed no answer, counts as the whole wait: it missed.
    value = exited if exited is not None and answered is not None else KILL_AFTER_S
    last_line = log.splitlines()[-1] if log else ""
    return Result(
        NAME,
        f"llm summarize --timeout 2, {case}: seconds until it exits",
        exited,
        baseline,
        "s",
        value,
        "s",
        target=TARGET_S,
        notes=f"{happened}; baseline: the same command on a free SQLite file"
        + (f"; its last line on stderr: {last_line[:200]}" if last_line else ""),
        extra={"exited_s": exited, "answered_s": answered, "stderr_tail": log[-2000:]},
    )
