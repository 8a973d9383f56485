"""One run: the collector's async fan-out, the --deep calls, worker processes and the
pipeline that records a run in the store and the lake."""
