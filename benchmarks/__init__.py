"""Benchmarks for `make bench`: each figure is a ratio of two things measured side by side."""
