"""Benchmarks of llmapp: start-up, per-call overhead, metrics, batch runs.

Run them with ``python -m bench`` (all) or ``python -m bench percall metrics`` (some);
``--quick`` for a faster, noisier run. Each prints a table and writes
``bench/results/latest.json``. They are a report, not a test: a missed target
prints MISSED and the exit status stays 0.
"""
