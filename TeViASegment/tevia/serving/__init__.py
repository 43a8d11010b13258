"""Serving: the warm worker (`python -m tevia.serving.worker`, JSON lines) and `tevia serve` (server/)."""
