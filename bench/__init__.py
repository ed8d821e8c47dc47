"""Benchmarks: ``python -m bench`` runs every section listed in ``bench/run.py``."""
