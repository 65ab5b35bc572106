"""Moved: TRA-Net is ``model.nets.tranet``; ``load_backbone_weights`` is in ``model.weights``.

Kept so that scripts written against ``model.tranet`` keep working.
"""
from .nets.tranet import *  # noqa: F401,F403
from .nets.tranet import (PRESETS, REGION_OF_AU, REGIONS, VARIANTS, TRANet,  # noqa: F401
                          TRANetConfig, build_model, hard_masks)
from .weights.vggface2 import load_backbone_weights  # noqa: F401
