"""Prefect flows: one per stage plus the hybrid pipeline."""
