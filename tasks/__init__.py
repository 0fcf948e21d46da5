"""Prefect tasks: one per atomic step, adding only orchestration (retries, caching, limits, artifacts)."""
