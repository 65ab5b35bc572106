"""Facts about DISFA+ that every part of the toolkit shares (sources: DISFAPLUS_FACTS.md).

Twelve AUs (DISFA's) coded as 0-5 intensity per frame, one label file per AU; nine subjects, all
of them also DISFA subjects (so DISFA -> DISFA+ trains on the other 18 DISFA subjects).
"""
from __future__ import annotations

import re

from ..disfa.facts import ALL_AUS, EVAL_AUS as DISFA_EVAL_AUS, MANIFEST_DIR
from ..disfa.facts import SUBJECTS as DISFA_SUBJECTS

AUS: tuple[int, ...] = ALL_AUS
#: The 12 AUs are evaluated; DISFA's 8 are reported beside them.
EVAL_AUS: tuple[int, ...] = ALL_AUS
DISFA_EIGHT: tuple[int, ...] = DISFA_EVAL_AUS
SUBJECTS: tuple[str, ...] = ("SN001", "SN003", "SN004", "SN007", "SN009", "SN010", "SN013",
                             "SN025", "SN027")
SUBJECT_PATTERN = re.compile(r"SN0\d\d")
#: The peers' DISFA+ rule: a frame is positive at intensity >= 2.
DEFAULT_THRESHOLD = 2
N_LANDMARKS = 49  # UNVERIFIED (anonymous sources only)
#: DISFA's subjects that are not DISFA+ subjects: the DISFA -> DISFA+ training pool (27 - 9).
DISFA_WITHOUT_DISFA_PLUS: tuple[str, ...] = tuple(s for s in DISFA_SUBJECTS if s not in SUBJECTS)
#: Peers' frame totals (py-feat): its aligned-crop manifest, and OpenFace 3's run on Images/.
PYFEAT_FRAMES, OPENFACE3_FRAMES = 57150, 57668
TEST_JSON = MANIFEST_DIR / "disfa_plus_test.json"
TRAIN_JSON = MANIFEST_DIR / "disfa_train_without_disfa_plus.json"
