"""The facts the networks need about faces, as plain numbers (``nets`` imports no pipeline code).

They mirror ``pipeline.datasets.disfa.facts`` (the AUs DISFA codes and the 8 it is evaluated on),
``pipeline.datasets.registry.KNOWN_AUS`` (every AU some supported dataset codes) and
``pipeline.alignment.DEFAULT_NOSE_FRACTION`` (where alignment puts the nose midpoint); a test keeps
them equal.
"""
from __future__ import annotations

from typing import Sequence

#: The 12 AUs DISFA codes, and the 8 that Table 1 and every peer evaluate.
ALL_AUS: tuple[int, ...] = (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26)
EVAL_AUS: tuple[int, ...] = (1, 2, 4, 6, 9, 12, 25, 26)
#: Every AU of DISFA, DISFA+ and BP4D (BP4D adds 7, 10, 14, 23, 24): each has a face region.
KNOWN_AUS: tuple[int, ...] = (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 24, 25, 26)

#: Face centre (x, y) as fractions of the aligned frame: the default alignment's nose midpoint.
DEFAULT_FACE_CENTER: tuple[float, float] = (0.5, 0.5)

#: Face region of each AU the supported datasets code (docs/model.md, "Regions of the AUs").
#: The paper assigns DISFA's 8 evaluated AUs (upper 1, 2, 4; middle 6, 9; lower 12, 25, 26); the
#: others follow FACS anatomy, read against ``hard_masks`` at the default alignment (nose
#: midpoint at 0.5 of the frame, chin at 0.875): upper = above the nose midpoint, middle = the
#: band 0.25-0.75 around it (eyes' lower lids, cheeks, nose, upper lip), lower = below it.
REGION_OF_AU: dict[int, str] = {
    1: "upper", 2: "upper", 4: "upper",
    5: "upper",   # upper lid raiser (levator palpebrae): the eyelids
    7: "upper",   # lid tightener (orbicularis oculi, palpebral part): the eyelids, as AU5
    6: "middle", 9: "middle",
    # upper lip raiser (levator labii superioris): beside the nose, AU9's neighbouring muscle;
    # it deepens the nasolabial furrow and lifts the upper lip, all between the nose wings and
    # the upper lip, inside the middle band (the lower mask would add the chin it never moves)
    10: "middle",
    12: "lower", 25: "lower", 26: "lower",
    # dimpler (buccinator): tightens the lip corners and dimples beside them, the corners AU12,
    # AU15 and AU20 act on, so it joins them in the lower region
    14: "lower",
    15: "lower", 17: "lower", 20: "lower",  # lip corner depressor, chin raiser, lip stretcher
    23: "lower", 24: "lower",  # lip tightener, lip pressor (orbicularis oris): the lips
}
REGIONS: tuple[str, ...] = ("upper", "middle", "lower")


def region_groups(au_ids: Sequence[int]) -> dict[str, list[int]]:
    """Column indices into ``au_ids`` of each face region that has AUs (upper, middle, lower)."""
    groups = {r: [i for i, au in enumerate(au_ids) if REGION_OF_AU[au] == r] for r in REGIONS}
    return {r: g for r, g in groups.items() if g}
