"""Pydantic models at every boundary: files, queue messages, results, API bodies, config."""
