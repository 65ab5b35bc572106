"""DISFA (Mavadati et al., 2013): its facts and the readers of its release.

``facts`` holds what every part of the toolkit shares (AUs, subjects, frame counts, manifests);
``layout`` finds the release's files, ``labels``, ``landmarks`` and ``error_log`` parse them.
The names below are the adapter's public API (see ``pipeline.datasets``).
"""
from .error_log import parse_error_log_table, read_error_log
from .labels import read_label_file, read_labels
from .landmarks import Landmarks, landmark_file_index, read_landmark_mat, read_landmarks
from .layout import (CAMERAS, MAX_RELEASE_FILE_BYTES, ReleaseError, ReleaseLayout, SubjectFiles,
                     discover, read_bounded)

__all__ = ["CAMERAS", "Landmarks", "MAX_RELEASE_FILE_BYTES", "ReleaseError", "ReleaseLayout",
           "SubjectFiles", "discover", "landmark_file_index", "parse_error_log_table",
           "read_bounded", "read_error_log", "read_label_file", "read_labels",
           "read_landmark_mat", "read_landmarks"]
