"""Benchmarks: one module per section, each exposing ``run(quick: bool = False) -> dict``.

``python -m bench.run [--quick] [--only a,b]`` runs them and writes ``bench/results.json`` and
``bench/results.md`` (see ``bench.run``).
"""
