"""Moved: the network is ``model.nets.senet``, its weight loader ``model.weights.vggface2``.

Kept so that scripts written against ``model.senet`` keep working.
"""
from .nets.senet import *  # noqa: F401,F403
from .nets.senet import SENet, senet50  # noqa: F401
from .weights.vggface2 import (NumpyOnlyUnpickler, UnsafePickleError, WeightsError,  # noqa: F401
                               load_vggface2_weights, read_weight_file, remap_timm_legacy_names)
