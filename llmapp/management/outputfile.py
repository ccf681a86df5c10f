"""Open batch output files: the one place that decides what a batch may write to.

`manage.py llm --output` and `llm_batch collect --output` open their file here. A symlink
is written through to its target. A directory, device or pipe is refused rather than
replaced or waited on, and so is the input file itself. The file stays locked while it
is open, so that a second run on it refuses at once instead of losing one run's results.
Records are appended whole, and the file is rewritten only by renaming a complete copy
over it, so that a failure leaves it as it was.
"""

import contextlib
import os
import stat
import tempfile

from django.core.management.base import CommandError

try:
    import fcntl
except ImportError:  # Windows has no flock: two runs on one file go unnoticed there
    fcntl = None


def stat_of(stream):
    """Return the os.stat_result of the file behind ``stream``, or None if there is none."""
    try:
        return os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return None


def same_file(first, second):
    """Return whether two os.stat_result are one regular file (a terminal may be stdin and stdout)."""
    return (
        first is not None
        and second is not None
        and stat.S_ISREG(first.st_mode)
        and (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino)
    )


def check(name, *, input_file=None):
    """Refuse ``name`` if it exists and is not a regular file, or is ``input_file`` (a stat)."""
    try:
        found = os.stat(name)  # follows symlinks, as writing will
    except FileNotFoundError:
        return
    except OSError as exc:
        raise CommandError(f"cannot write --output {name}: {exc.strerror}.") from None
    _refuse(name, found, input_file)


def _refuse(name, found, input_file):
    if not stat.S_ISREG(found.st_mode):
        raise CommandError(f"--output {name} is not a regular file; name a file, or '-' for standard output.")
    if same_file(found, input_file):
        raise CommandError(f"--output {name} is the input file itself; write the results to another file.")


@contextlib.contextmanager
def open_output(name, *, input_file=None):
    """Yield ``name`` as an OutputFile, created if need be and locked until the block ends."""
    check(name, input_file=input_file)
    path = os.path.realpath(name)
    while True:
        try:
            # O_NONBLOCK: a pipe swapped in since check() must not hang the open.
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_NONBLOCK", 0), 0o666)
        except OSError as exc:
            raise CommandError(f"cannot write --output {name}: {exc.strerror}.") from None
        try:
            opened = os.fstat(fd)
            _refuse(name, opened, input_file)
            _lock(fd, name)
            with contextlib.suppress(FileNotFoundError):
                if same_file(opened, os.stat(path)):
                    break
        except BaseException:
            os.close(fd)
            raise
        # Between our open and our lock, a run that was finishing renamed a new file over
        # this one: what we locked is no longer the output.
        os.close(fd)
    try:
        output = OutputFile(name, path, fd, opened.st_size)
    except OSError as exc:
        os.close(fd)
        raise CommandError(f"cannot write --output {name}: {exc.strerror}.") from None
    try:
        yield output
    finally:
        os.close(fd)


def _lock(fd, name):
    if fcntl is None:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise CommandError(
            f"--output {name} is in use by another run; wait for it to finish, or write to another file."
        ) from None
    except OSError as exc:
        raise CommandError(f"cannot lock --output {name}: {exc.strerror}.") from None


class OutputFile:
    """An open, locked batch output: read it, append to it, or replace it whole."""

    def __init__(self, name, path, fd, size):
        self.name = name  # as the user wrote it, for messages
        self.path = path  # a symlink's target
        self.fd = fd
        self.size = size
        if size:
            with self.reader() as handle:
                handle.seek(size - 1)
                cut = handle.read(1) != b"\n"
            if cut:  # by a power cut, say: the next record must not be glued to it
                self.write(b"\n")

    @contextlib.contextmanager
    def reader(self):
        """Yield the file as it is now, a binary file object at its start."""
        with open(self.fd, "rb", closefd=False) as handle:
            handle.seek(0)
            yield handle

    def write(self, data):
        """Append ``data`` (bytes) whole: if writing fails, cut the file back to where it was."""
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, self.size)
            raise
        self.size += len(data)

    def replace(self, chunks):
        """Write ``chunks`` (bytes) to a new file beside this one, then rename it over this one.

        On any failure the new file is removed and this one is left as it was. Call it
        last: the lock stays on the old file, which keeps a second run out until this one
        ends, and the next run to open the name gets the new file.
        """
        folder, base = os.path.split(self.path)
        fd, temporary = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=folder)
        try:
            with open(fd, "wb") as handle:
                os.chmod(temporary, stat.S_IMODE(os.fstat(self.fd).st_mode))  # not mkstemp's 0600
                handle.writelines(chunks)
                handle.flush()
                os.fsync(fd)  # the rename must never put an unwritten file in place
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
