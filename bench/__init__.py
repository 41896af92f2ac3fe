"""Benchmarks (scripts, not tests): each prints a table and writes JSON to ``bench/results/``.

Run from the repository root, as a module or a file::

    python -m bench.phase1 --device cuda --n 50000 --classes 100
    python3 bench/phase1.py --device cuda --n 50000 --classes 100

:mod:`bench.common` is the one place that puts the checkout on ``sys.path`` (see there why).
"""
