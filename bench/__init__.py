"""Benchmarks: each module prints a table, ratios against a baseline measured in the same run.

Run from the repository root as modules (``.venv/bin/python -m bench.qc``): the project's packages and the
test helpers they share (``tests.support``: the OpenRouter stub, real photos, a started Prefect server,
PostgreSQL) are then importable as they are, with no ``sys.path`` edits.
"""
