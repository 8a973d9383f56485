"""Levers tried before they exist in the collector: `--variants "base;patch=NAME"`.

Each sub-folder holds a `sitecustomize.py` that the harness puts first on PYTHONPATH for
that variant only (the collector and its worker processes), patching the collector at
start-up. They are experiments to measure a change before making it, never shipped.
"""
