"""Performance benchmarks: the suite's fast paths against reference paths that do what the official code does.

``python -m bench.bench`` (or ``python bench/bench.py``; ``--quick`` for the tiny model only) writes
``bench/RESULTS.md``. See :mod:`bench.bench`.
"""
