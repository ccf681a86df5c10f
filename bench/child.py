"""Run one in-process benchmark function in this process, on the environment's DATABASE_URL.

    python -m bench.child MODULE:FUNCTION OUTPUT.json [--quick]

``bench.harness.in_child`` starts it, so that the per-call benchmarks measure on
PostgreSQL as well as on the SQLite file of the benchmark's own process: Django has
one default database per process. ``FUNCTION(quick=...)`` returns Results, written to
OUTPUT as JSON.
"""

import argparse
import importlib
import json
import sys

from .harness import setup_django


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("function", help="module:function, e.g. bench.percall:openai_database")
    parser.add_argument("output")
    parser.add_argument("--quick", action="store_true")
    options = parser.parse_args()
    setup_django()
    module, _, name = options.function.partition(":")
    results = getattr(importlib.import_module(module), name)(quick=options.quick)
    with open(options.output, "w", encoding="utf-8") as out:
        json.dump([result.as_dict() for result in results], out)


if __name__ == "__main__":
    sys.exit(main())
