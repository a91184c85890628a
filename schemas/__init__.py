"""Pydantic models at every boundary: files, queue messages, results, API bodies, config."""

from importlib.metadata import PackageNotFoundError, version

try:
    VERSION = version("videobert-stream")  # the installed project's version (pyproject.toml)
except PackageNotFoundError:  # run from a checkout that was never installed
    VERSION = "0+unknown"
