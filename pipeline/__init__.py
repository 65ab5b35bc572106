"""Offline DISFA pipeline: synthetic twin, alignment to HDF5 shards, folds and weights."""
__version__ = "0.1.0"
