"""Benchmarks of llmapp: start-up, per-call overhead (sync and async), metrics, a web server
under load, batch runs, and a stalled usage database.

Run them with ``python -m bench`` (all) or ``python -m bench percall web`` (some);
``--quick`` for a faster, noisier run. Each prints a table and writes
``bench/results/latest.json``. They are a report, not a test: a missed target
prints MISSED and the exit status stays 0. PostgreSQL rows use the server at
``BENCH_POSTGRES_URL`` (default ``postgres://postgres@127.0.0.1:5432/test``), on a
database and role of the run's own, dropped at the end; without a server they are
SKIPPED.
"""
