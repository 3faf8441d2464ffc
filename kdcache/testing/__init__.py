"""Synthetic caches and batches with realistic statistics, for tests and benchmarks (no teacher, no images)."""
