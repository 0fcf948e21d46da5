"""Prefect blocks of the project (credentials/config)."""
