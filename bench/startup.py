"""Start-up: `manage.py llm summarize --message hi` against a bare `django.setup()`.

Both run as fresh processes with the same settings (settings.dev), the same
``configure()``, an empty env file and a migrated SQLite database, so the llm run
also inserts its usage event, as a user's would. Pairs are interleaved, their order
alternating. One more run of the command under ``-X importtime`` lists what it
imported: no provider SDK may be among it.
"""

import sys

from .harness import MANAGE, Workspace, interleaved, median, run
from .report import Result, ratio

NAME = "startup"
TARGET = 1.3
SDKS = ("openai", "anthropic", "google.genai")

FLOOR = (
    "import django; from llmproject.runner import configure; "
    f"configure(default_settings='settings.dev', root={str(MANAGE.parent)!r}); django.setup()"
)


def llm_args(*flags):
    return [sys.executable, *flags, str(MANAGE), "llm", "summarize", "--message", "hi"]


def floor_args(*flags):
    return [sys.executable, *flags, "-c", FLOOR]


def imported_modules(importtime_stderr):
    """Return the modules named in ``-X importtime`` output."""
    names = []
    for line in importtime_stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                names.append(name)
    return names


def sdk_modules(names):
    return sorted({name for name in names if any(name == sdk or name.startswith(sdk + ".") for sdk in SDKS)})


def bench(workspace: Workspace, quick=False):
    pairs = 5 if quick else 15
    database = workspace.fresh_database("startup")
    env = workspace.env(database)

    def timed(args, check_output=None):
        def once():
            finished = run(args, env=env)
            if finished.returncode or (check_output and check_output not in finished.stdout):
                raise RuntimeError(f"{' '.join(args)} failed:\n{finished.stdout}{finished.stderr}")
            return finished

        return once

    llm = timed(llm_args(), check_output="preview answer")
    floor = timed(floor_args())
    # One of each first, unmeasured: bytecode caches, the page cache, the database file.
    llm(), floor()
    runs = interleaved({"llm": llm, "floor": floor}, rounds=pairs)
    llm_ms = median([r.wall_s for r in runs["llm"]]) * 1000
    floor_ms = median([r.wall_s for r in runs["floor"]]) * 1000
    llm_cpu = median([r.user_s + r.system_s for r in runs["llm"]]) * 1000
    floor_cpu = median([r.user_s + r.system_s for r in runs["floor"]]) * 1000

    traced = run(llm_args("-X", "importtime"), env=env)
    llm_imports = imported_modules(traced.stderr)
    floor_imports = imported_modules(run(floor_args("-X", "importtime"), env=env).stderr)
    sdks = sdk_modules(llm_imports)
    extra_imports = sorted(set(llm_imports) - set(floor_imports))
    sentry = any(name == "sentry_sdk" for name in llm_imports)
    return [
        Result(
            NAME,
            "llm summarize vs django.setup() (wall)",
            llm_ms,
            floor_ms,
            "ms",
            ratio(llm_ms, floor_ms),
            "x",
            target=TARGET,
            notes=f"median of {pairs} interleaved pairs; CPU time (user+sys) {llm_cpu:.0f} ms "
            f"vs {floor_cpu:.0f} ms = {ratio(llm_cpu, floor_cpu):.2f}x; the llm run imports "
            f"{len(extra_imports)} modules more than the floor",
            extra={
                "llm_wall_ms": [r.wall_s * 1000 for r in runs["llm"]],
                "floor_wall_ms": [r.wall_s * 1000 for r in runs["floor"]],
                "llm_cpu_ms": llm_cpu,
                "floor_cpu_ms": floor_cpu,
                "imports_beyond_floor": extra_imports,
            },
        ),
        Result(
            NAME,
            "provider SDKs imported (-X importtime)",
            len(sdks),
            None,
            "",
            len(sdks),
            "",
            target=0,
            notes=(", ".join(sdks) if sdks else f"none of {', '.join(SDKS)}")
            + f"; sentry_sdk {'imported' if sentry else 'not imported'}",
            extra={"sdk_modules": sdks},
        ),
    ]
