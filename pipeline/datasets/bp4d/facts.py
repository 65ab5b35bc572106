"""Facts about BP4D-Spontaneous that every part of the toolkit shares (sources: BP4D_FACTS.md).

Occurrence is coded per frame as 0/1 with 9 = not coded (masked, never read as 0 or 1); the
FERA 2015 subset adds 0-5 intensity for five AUs. Landmarks are 49 points (DISFA's 66 without
the jaw), MATLAB 1-based, in portrait 1040 x 1392 frames.
"""
from __future__ import annotations

import re

#: The 12 AUs the field evaluates on BP4D (occurrence codes), in column order.
OCCURRENCE_AUS: tuple[int, ...] = (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24)
EVAL_AUS: tuple[int, ...] = OCCURRENCE_AUS
#: The FERA 2015 intensity AUs (0-5, 9 = unknown).
INTENSITY_AUS: tuple[int, ...] = (6, 10, 12, 14, 17)
#: 41 subjects: F001-F023 and M001-M018; 8 tasks each (T1-T8).
SUBJECTS: tuple[str, ...] = (tuple(f"F{n:03d}" for n in range(1, 24))
                             + tuple(f"M{n:03d}" for n in range(1, 19)))
TASKS: tuple[str, ...] = tuple(f"T{n}" for n in range(1, 9))
SUBJECT_PATTERN = re.compile(r"[FM]0\d\d")
#: The code for "not coded / unknown" in the occurrence and intensity files.
NOT_CODED_CODE = 9
N_LANDMARKS = 49
FRAME_SIZE = (1040, 1392)  # width, height (portrait; UNVERIFIED: measured on one frame)
