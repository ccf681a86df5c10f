"""The batch side of `manage.py llm`: --input, --output, --concurrency, --enqueue."""

import contextlib
import os
import sys

from django.core.management.base import CommandError

from llmapp import batch
from llmapp.usecases import get_usecase


class BatchRun:
    def __init__(self, command, options):
        self.command = command
        self.options = options
        self.usecase = options["usecase"]

    def run(self):
        get_usecase(self.usecase)  # an unknown use case fails before any input is read
        concurrency = self.options["concurrency"]
        if concurrency < 1:
            raise CommandError(f"--concurrency must be at least 1, got {concurrency}.")
        with self.open_input() as lines:
            items = batch.read_items(lines)
            if self.options["enqueue"]:
                self.enqueue(items)
            else:
                self.run_here(items, concurrency)

    @contextlib.contextmanager
    def open_input(self):
        path = self.options["input"]
        if path == "-":
            yield self.options.get("stdin", sys.stdin)
            return
        try:
            handle = open(path, encoding="utf-8")  # noqa: SIM115 (closed below)
        except OSError as exc:
            raise CommandError(f"cannot read --input {path}: {exc.strerror}.") from None
        with handle:
            yield handle

    def run_here(self, items, concurrency):
        output = self.options["output"]
        if not output:
            raise CommandError("--input needs --output FILE (or '-' for standard output).")
        skip = set() if output == "-" else batch.completed_ids(output)
        bar = self.progress_bar()
        try:
            with self.open_output(output) as out:

                def write(record):
                    out.write(batch.dumps(record))
                    out.flush()

                try:
                    stats = batch.run_batch(
                        self.usecase,
                        items,
                        write,
                        concurrency=concurrency,
                        skip=skip,
                        progress=bar.update if bar else None,
                    )
                except KeyboardInterrupt:
                    self.command.stderr.write(
                        f"\nInterrupted: what finished is in {output}; run the same command to resume."
                    )
                    sys.exit(130)
        finally:
            if bar:
                bar.close()
        summary = f"{stats.done} done, {stats.failed} failed"
        if stats.skipped:
            summary += f", {stats.skipped} skipped (already in {output})"
        if stats.failed:
            raise CommandError(f"{summary}; the failed items are in {output} with their error.")
        if self.options["verbosity"] >= 1 and not self.options["quiet"]:
            self.command.stderr.write(summary)

    def open_output(self, output):
        if output == "-":
            return contextlib.nullcontext(self.command.stdout)
        try:
            return open(output, "a", encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"cannot write --output {output}: {exc.strerror}.") from None

    def progress_bar(self):
        stream = self.command.stderr._out
        if self.options["quiet"] or not stream.isatty():
            return None
        try:
            from tqdm import tqdm
        except ImportError:
            return None
        bar = tqdm(total=self.count_input(), file=stream, unit="item", **_terminal_size(stream))
        return ProgressBar(bar)

    def count_input(self):
        path = self.options["input"]
        if path == "-":
            return None
        with open(path, "rb") as handle:
            return sum(1 for line in handle if line.strip())

    def enqueue(self, items):
        from llmapp.tasks import enqueue_batch

        created = enqueue_batch(self.usecase, items)
        self.command.stdout.write(
            f"Enqueued batch {created.pk}: {created.total} item(s). "
            f"Follow it with `manage.py llm_batch status {created.pk}`; "
            f"write its results with `manage.py llm_batch collect {created.pk} --output FILE`."
        )


def _terminal_size(stream):
    # A terminal that reports a size of 0x0 (a bare pty) would hide tqdm's bar.
    try:
        columns, lines = os.get_terminal_size(stream.fileno())
    except (OSError, ValueError):
        columns, lines = 0, 0
    return {"ncols": columns or 80, "nrows": lines or 24}


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
