"""What the benchmarks share: an isolated workspace, child processes, the fake server, medians."""

import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.environment import ISOLATED_VARIABLES, isolated_environ

ROOT = Path(__file__).resolve().parent.parent
MANAGE = ROOT / "manage.py"


class Workspace:
    """A temporary folder with an empty env file and a SQLite database migrated once."""

    def __init__(self):
        self.path = Path(tempfile.mkdtemp(prefix="llmapp-bench-"))
        self.env_file = self.path / "empty.env"
        self.env_file.write_text("")
        self._migrated = None

    def close(self):
        shutil.rmtree(self.path, ignore_errors=True)

    def env(self, database=None, **variables):
        """The environment of a manage.py child: isolated, on ``database`` (a migrated copy)."""
        env = isolated_environ()
        env |= {
            "LLM_ENV_FILE": str(self.env_file),
            "DATABASE_URL": f"sqlite:///{database or self.migrated()}",
            "DJANGO_SETTINGS_MODULE": "settings.dev",
        }
        return env | variables

    def migrated(self):
        """Return the path of the database that `manage.py migrate` ran on (run it the first time)."""
        if self._migrated is None:
            database = self.path / "migrated.sqlite3"
            env = self.env(database)
            result = subprocess.run(
                [sys.executable, str(MANAGE), "migrate", "-v0"],
                env=env,
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode:
                raise RuntimeError(f"manage.py migrate failed:\n{result.stderr}")
            self._migrated = database
        return self._migrated

    def fresh_database(self, name):
        """Return a new copy of the migrated database, so runs don't see each other's rows."""
        copy = self.path / f"{name}.sqlite3"
        shutil.copyfile(self.migrated(), copy)
        return copy


_django_ready = False


def setup_django(workspace):
    """Start Django in this process on bench.settings and a migrated SQLite copy, once."""
    global _django_ready
    if _django_ready:
        return
    for key in [key for key in os.environ if key.startswith(ISOLATED_VARIABLES)]:
        del os.environ[key]
    os.environ |= {
        "LLM_ENV_FILE": str(workspace.env_file),
        "DATABASE_URL": f"sqlite:///{workspace.fresh_database('inprocess')}",
        "DJANGO_SETTINGS_MODULE": "bench.settings",
    }
    import django

    from llmproject.runner import configure

    configure(default_settings="bench.settings", root=ROOT)
    django.setup()
    _django_ready = True


@dataclass
class Finished:
    returncode: int
    wall_s: float
    max_rss_mb: float
    user_s: float
    system_s: float
    stdout: str
    stderr: str


# Starts the measured command and writes its wall time and rusage as JSON to the fd
# in argv[1].
# A child's peak RSS (ru_maxrss) starts from the RSS of the process that forked it,
# and this one is ~10 MB where the benchmark's own process is many times that.
LAUNCHER = """
import json, os, sys, time
fd = int(sys.argv[1])
os.set_inheritable(fd, False)
started = time.perf_counter()
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - started
with os.fdopen(fd, "w") as report:
    json.dump({"code": os.waitstatus_to_exitcode(status), "wall": wall, "rss_kib": usage.ru_maxrss,
               "user": usage.ru_utime, "system": usage.ru_stime}, report)
"""


def run(args, *, env, timeout=600):
    """Run ``args`` in ROOT; return its wall time, CPU time and its own peak RSS.

    The command is started by a small launcher process, which times it and collects
    its rusage with ``wait4``, so the figures are the command's alone.
    """
    read, write = os.pipe()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(
            [sys.executable, "-S", "-c", LAUNCHER, str(write), *args],
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            pass_fds=(write,),
            start_new_session=True,  # its own process group, to kill it whole on a timeout
        )
        os.close(write)
        with os.fdopen(read) as report:
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                raise
            figures = json.loads(report.read() or "null")
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if process.returncode or figures is None:
        raise RuntimeError(f"the launcher failed ({process.returncode}) for {' '.join(args)}:\n{stderr}")
    return Finished(
        figures["code"],
        figures["wall"],
        figures["rss_kib"] / 1024,  # KiB on Linux
        figures["user"],
        figures["system"],
        stdout,
        stderr,
    )


class FakeServer:
    """The tests' fake OpenAI server, in a child process of its own (see bench/fakeserver.py).

    In its own process it competes for no GIL with the client being measured, as a
    real server would not.
    """

    def __init__(self, *, delay=0.0, replies=0):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.fakeserver", "--delay", str(delay), "--replies", str(replies)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.base_url = self.process.stdout.readline().strip()
        if not self.base_url.startswith("http"):
            self.stop()
            raise RuntimeError("the fake OpenAI server did not start")

    def stop(self):
        """Stop the server; return how many chat completions it served."""
        with contextlib.suppress(BrokenPipeError):
            self.process.stdin.close()
        served = self.process.stdout.read().strip()
        self.process.wait(timeout=10)
        return int(served) if served.isdigit() else None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        if self.process.poll() is None:
            self.stop()


def median(values):
    return statistics.median(values)


def interleaved(candidates, rounds):
    """Run each of ``candidates`` (name -> callable returning a figure) once per round.

    The order rotates every round so that drift of the machine (another process, CPU
    frequency, caches) falls on all of them alike. Return name -> list of figures.
    """
    names = list(candidates)
    figures = {name: [] for name in names}
    for round_number in range(rounds):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            figures[name].append(candidates[name]())
    return figures
