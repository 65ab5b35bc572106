"""Scoring and reporting: per-AU metrics, tables and records, the paper's published numbers, plots.

Pure functions over arrays and dicts: may import numpy, torch and matplotlib, never the engine,
the networks or the commands.
"""
