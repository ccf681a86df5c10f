"""python -m bench [--quick] [--markdown] [startup] [percall] [async] [metrics] [web] [batch] [stalled]"""

import argparse
import compileall
import signal
import sys
import time
import traceback

from . import asynccall, batch, metrics, percall, report, stalled, startup, web
from .harness import ROOT, Workspace

BENCHMARKS = {module.NAME: module for module in (startup, percall, asynccall, metrics, web, batch, stalled)}


def _interrupt(signum, frame):
    # A SIGTERM cleans up as a Ctrl-C does: child processes, the PostgreSQL database, files.
    raise KeyboardInterrupt


#: The project's own packages, which an installed wheel would have compiled.
SOURCES = ("llmapp", "llmproject", "settings", "bench", "tests")


def compile_sources():
    """Write the bytecode of the project's own modules, as pip does when it installs a wheel.

    The benchmarks run this checkout, installed editable: with PYTHONDONTWRITEBYTECODE
    set (as on these machines), every process would compile each of llmapp's modules
    again, about 0.2 s a command that a user's installed llmapp never pays and the raw
    SDK's baselines, compiled at their install, never pay either.
    """
    for folder in SOURCES:
        compileall.compile_dir(ROOT / folder, quiet=1)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark llmapp; print a table and write bench/results/latest.json. "
        "A missed target is reported, not an error: the exit status stays 0.",
    )
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"Benchmarks to run, of: {', '.join(BENCHMARKS)} (default: all).",
    )
    parser.add_argument("--quick", action="store_true", help="Fewer rounds and items: faster, noisier.")
    parser.add_argument(
        "--markdown", action="store_true", help="Also print the table in Markdown, for the README."
    )
    options = parser.parse_args(argv)
    unknown = [name for name in options.names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    # Always in this order: the in-process ones share one Django set-up.
    names = [name for name in BENCHMARKS if name in options.names or not options.names]

    signal.signal(signal.SIGTERM, _interrupt)
    info = report.machine()
    print(f"Machine: {report.machine_line(info)}{' (quick run)' if options.quick else ''}", flush=True)
    started = time.perf_counter()
    compile_sources()
    results, failed, durations = [], [], {}
    workspace = Workspace()
    try:
        for name in names:
            print(f"running {name} ...", file=sys.stderr, flush=True)
            begun = time.perf_counter()
            try:
                found = BENCHMARKS[name].bench(workspace, quick=options.quick)
            except Exception:
                traceback.print_exc()
                failed.append(name)
                continue
            durations[name] = round(time.perf_counter() - begun, 1)
            print(f"  {name}: {durations[name]:.1f} s", file=sys.stderr, flush=True)
            results.extend(found)
    except KeyboardInterrupt:
        print("\nInterrupted: cleaning up; no results written.", file=sys.stderr)
        return 130
    finally:
        # The clean-up is bounded (a few seconds per child process): a second Ctrl-C must not cut it.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            workspace.close()
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    elapsed = time.perf_counter() - started

    print()
    print(report.table(results))
    print()
    print(report.notes(results))
    if options.markdown:
        print()
        print(report.table(results, markdown=True))
    missed = [result for result in results if result.status == report.MISSED]
    print()
    not_measured = [result for result in results if result.status == report.SKIPPED]
    for result in missed:
        print(f"MISSED: {result.benchmark}: {result.name}")
    for result in not_measured:
        print(f"SKIPPED: {result.benchmark}: {result.name} ({result.notes})")
    for name in failed:
        print(f"FAILED TO RUN: {name} (see the traceback above)")
    if not missed and not failed and not not_measured:
        print("Every target met.")
    path = report.write(results, info, quick=options.quick, elapsed=elapsed, durations=durations)
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    print(f"{len(results)} results in {elapsed:.0f} s, written to {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
