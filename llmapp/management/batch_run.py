"""The batch side of `manage.py llm`: --input, --output, --concurrency, --enqueue."""

import contextlib
import os
import sys
import threading

from django.core.management.base import CommandError

from llmapp import batch, eventstream
from llmapp.conf.usecases import get_usecase
from llmapp.exceptions import ConfigurationError
from llmapp.management import outputfile


class BatchRun:
    def __init__(self, command, options):
        self.command = command
        self.options = options
        self.usecase = options["usecase"]
        self.input = options["input"]
        self.output = options["output"]

    def run(self):
        get_usecase(self.usecase)  # an unknown use case fails before any input is read
        concurrency = self.options["concurrency"]
        if concurrency < 1:
            raise CommandError(f"--concurrency must be at least 1, got {concurrency}.")
        if not self.output and not self.options["enqueue"]:
            raise CommandError("--input needs --output FILE (or '-' for standard output).")
        with self.open_input() as (lines, input_file):
            try:
                if self.options["enqueue"]:
                    self.enqueue(batch.read_items(lines))
                else:
                    self.run_here(lines, input_file, concurrency)
            except batch.InputError as exc:
                raise CommandError(f"--input {self.input_name}: {exc}.") from None

    @property
    def input_name(self):
        return "standard input" if self.input == "-" else self.input

    @property
    def output_name(self):
        return "standard output" if self.output == "-" else self.output

    @contextlib.contextmanager
    def open_input(self):
        """Yield the input's lines, as bytes so that a bad byte names its line, and its stat."""
        if self.input == "-":
            stdin = self.options.get("stdin", sys.stdin)
            yield getattr(stdin, "buffer", stdin), outputfile.stat_of(stdin)
            return
        try:
            handle = open(self.input, "rb")  # noqa: SIM115 (closed below)
        except OSError as exc:
            raise CommandError(f"cannot read --input {self.input}: {exc.strerror}.") from None
        with handle:
            yield handle, os.fstat(handle.fileno())

    def run_here(self, lines, input_file, concurrency):
        if self.output == "-":
            if outputfile.same_file(outputfile.stat_of(self.command.stdout), input_file):
                raise CommandError("standard output is the input file itself; redirect it to another file.")
        else:
            outputfile.check(self.output, input_file=input_file)
        positions = {}  # id: input line; no id twice, and the order a resumed output is put back in
        total = None
        if _seekable(lines):
            # A file is checked whole before any call. A pipe cannot be read twice: a bad
            # line in it stops the batch when it is reached.
            start = lines.tell()
            for _ in batch.read_items(lines, positions):
                pass
            lines.seek(start)
            total = len(positions)
        items = batch.read_items(lines, positions)
        if self.output == "-":
            self.report(self.execute(items, self.write_stdout, concurrency, total))
        else:
            self.report(self.run_to_file(items, input_file, positions, concurrency, total))

    def write_stdout(self, record):
        self.command.stdout.write(batch.dumps(record))
        self.command.stdout.flush()

    def run_to_file(self, items, input_file, positions, concurrency, total):
        """Run ``items`` into --output, locked; resume what it holds, and leave it in input order."""
        with outputfile.open_output(self.output, input_file=input_file) as out:
            resumed = out.size > 0
            skip = set()
            if resumed:
                with out.reader() as previous:
                    skip = batch.finished_ids(previous)
            written = 0

            def write(record):
                nonlocal written
                try:
                    out.write(batch.dumps(record).encode())
                except OSError as exc:
                    raise OutputFailed(
                        f"cannot write --output {self.output}: {exc.strerror}. It holds every record "
                        f"written before ({written} by this run); make room, then run the same command "
                        "to resume."
                    ) from None
                written += 1

            try:
                stats = self.execute(items, write, concurrency, total, skip)
            except batch.InputError as exc:
                if resumed:
                    self.put_in_order(out, positions)
                raise CommandError(
                    f"--input {self.input_name}: {exc}. The batch stopped there; the results of the "
                    f"lines before it are in {self.output}."
                ) from None
            except ConfigurationError as exc:
                if resumed:
                    self.put_in_order(out, positions)
                raise CommandError(
                    f"{exc} The batch stopped at once; the results of the items before are in "
                    f"{self.output}: fix the setting, then run the same command to resume."
                ) from None
            if resumed:
                try:
                    self.put_in_order(out, positions)
                except KeyboardInterrupt:
                    stats.interrupted = True
            return stats

    def execute(self, items, write, concurrency, total, skip=frozenset()):
        bar = self.progress_bar(total)
        try:
            return batch.run_batch(
                self.usecase,
                items,
                write,
                concurrency=concurrency,
                skip=skip,
                progress=bar.update if bar else None,
                waiting=self.waiting,
                # A file never keeps a result waiting for its next line; a pipe may.
                read_ahead=total is not None,
            )
        except OutputFailed as exc:
            # Nothing more can be written: the calls under way would only be paid for and lost.
            if calls_under_way():
                self.exit_now(f"CommandError: {exc}", 1)
            raise
        except KeyboardInterrupt:
            # A second Ctrl-C that came while the batch was already stopping, outside the wait
            # for the calls under way: it stops now all the same, the calls left behind.
            if calls_under_way():
                self.exit_now(
                    f"\nInterrupted: what finished is in {self.output_name}; run the same command to resume.",
                    130,
                )
            raise
        finally:
            if bar:
                bar.close()

    def put_in_order(self, out, positions):
        try:
            with out.reader() as previous:
                out.replace(batch.in_input_order(previous, positions))
        except OSError as exc:
            raise CommandError(
                f"cannot put --output {self.output} back in input order: {exc.strerror}. Every record "
                "is in it; the next run of the same command tries again."
            ) from None

    def waiting(self, count):
        self.command.stderr.write(
            f"\nStopping: waiting for {count} call(s) under way; press Ctrl-C again to stop now."
        )
        self.command.stderr.flush()

    def report(self, stats):
        if stats.interrupted:
            stopped = f"stopped waiting for {stats.running} call(s); " if stats.running else ""
            self.command.stderr.write(
                f"\nInterrupted: {stopped}what finished is in {self.output_name}; "
                "run the same command to resume."
            )
            if stats.running:
                self.exit_now("", 130)
            sys.exit(130)
        summary = f"{stats.done} done, {stats.failed} failed"
        if stats.skipped:
            summary += f", {stats.skipped} skipped (already in {self.output})"
        if stats.failed:
            raise CommandError(f"{summary}; the failed items are in {self.output_name} with their error.")
        if self.options["verbosity"] >= 1 and not self.options["quiet"]:
            self.command.stderr.write(summary)

    def exit_now(self, line, code):
        exit_now(self.command, line, code)

    def progress_bar(self, total):
        return progress_bar(self.command.stderr._out, total, quiet=self.options["quiet"])

    def enqueue(self, items):
        from llmapp.batch.tasks import enqueue_batch

        created = enqueue_batch(self.usecase, items)
        self.command.stdout.write(
            f"Enqueued batch {created.pk}: {created.total} item(s). "
            f"Follow it with `manage.py llm_batch status {created.pk}`; "
            f"write its results with `manage.py llm_batch collect {created.pk} --output FILE`."
        )


#: Seconds an exit that cannot wait for the calls under way gives the usage writer.
EXIT_FLUSH_TIMEOUT = 1.0


def exit_now(command, line, code):
    """Exit with ``code`` without waiting for the calls under way; ``command`` says ``line`` first.

    Threads still in a call would hold up the interpreter's exit until their timeout,
    and exit handlers wait for them: the usage recorded so far is written here instead.
    """
    if line:
        command.stderr.write(line)
    command.stdout.flush()
    command.stderr.flush()
    eventstream.flush(timeout=EXIT_FLUSH_TIMEOUT)
    os._exit(code)


class OutputFailed(CommandError):
    """The output could not be written: the batch stops at once."""


def calls_under_way():
    """Say whether a batch worker thread is still in a call."""
    return any(
        thread.name.startswith(batch.WORKER_PREFIX) and thread.is_alive() for thread in threading.enumerate()
    )


def _seekable(lines):
    try:
        return lines.seekable()
    except (AttributeError, OSError, ValueError):
        return False


def _terminal_size(stream):
    # A terminal that reports a size of 0x0 (a bare pty) would hide tqdm's bar.
    try:
        columns, lines = os.get_terminal_size(stream.fileno())
    except (OSError, ValueError):
        columns, lines = 0, 0
    return {"ncols": columns or 80, "nrows": lines or 24}


def progress_bar(stream, total, *, quiet=False, unit="item"):
    """A ProgressBar on ``stream`` when it is a terminal and tqdm is installed (the batch extra)."""
    if quiet or not stream.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return ProgressBar(tqdm(total=total, file=stream, unit=unit, **_terminal_size(stream)))


class ProgressBar:
    """tqdm, counting failures beside done items, its rate and ETA."""

    def __init__(self, bar):
        self.bar = bar
        self.failed = 0

    def update(self, record):
        if "error" in record:
            self.failed += 1
            self.bar.set_postfix(failed=self.failed, refresh=False)
        self.bar.update(1)

    def close(self):
        self.bar.close()
