"""Benchmarks: `python -m benchmarks.run` (make bench); not part of the test suite."""
