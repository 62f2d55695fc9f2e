"""Benchmarks of repocache against plain git (and git-cache-clone), side by side, with targets.

Run ``python -m benchmarks --help``; see ``benchmarks/README.md`` for the method and the figures.
"""
