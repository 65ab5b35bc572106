"""The facts the networks need about faces, as plain numbers (``nets`` imports no pipeline code).

They mirror ``pipeline.datasets.disfa.facts`` (the AUs DISFA codes and the 8 it is evaluated on),
``pipeline.datasets.registry.KNOWN_AUS`` (every AU some supported dataset codes) and
``pipeline.alignment.DEFAULT_NOSE_FRACTION`` (where alignment puts the nose midpoint); a test keeps
them equal.
"""
from __future__ import annotations

#: The 12 AUs DISFA codes, and the 8 that Table 1 and every peer evaluate.
ALL_AUS: tuple[int, ...] = (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26)
EVAL_AUS: tuple[int, ...] = (1, 2, 4, 6, 9, 12, 25, 26)
#: Every AU of DISFA, DISFA+ and BP4D (BP4D adds 7, 10, 14, 23, 24): each has a face region.
KNOWN_AUS: tuple[int, ...] = (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 24, 25, 26)

#: Face centre (x, y) as fractions of the aligned frame: the default alignment's nose midpoint.
DEFAULT_FACE_CENTER: tuple[float, float] = (0.5, 0.5)
