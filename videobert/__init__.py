"""videobert package."""
