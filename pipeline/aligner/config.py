"""What ``pipeline.align`` is asked to do (AlignConfig), the drop reasons and the shard version."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from .. import __version__
from ..alignment import DEFAULT_CHIN_FRACTION, DEFAULT_NOSE_FRACTION, AlignmentConfig
from ..alignment_rules import ALIGNMENT_RULES
from ..datasets.disfa.facts import DEFAULT_THRESHOLD, EVAL_AUS, au_columns, parse_threshold
from ..datasets.registry import LEGACY_DATASET, dataset_info
from ..shards import DEFAULT_JPEG_QUALITY, ENCODINGS

ALIGN_VERSION = 1
PIPELINE_VERSION = f"pipeline-{__version__}/align-{ALIGN_VERSION}"
SUMMARY_NAME = "align_summary.json"

#: Why a frame is left out, in the order the checks run (a frame counts under its first reason).
DROP_REASONS = (
    "error_log",                # listed in the release's Error_LOG_Sheet (tracking failure)
    "landmarks_missing",        # no landmark file and no present neighbour on both sides
    "landmarks_nan",            # a landmark is NaN or infinite
    "landmarks_degenerate",     # nose and chin (nearly) coincide, or the chin is above the nose
    "landmarks_outside_frame",  # nose/chin off the frame, or any point far outside it
    "no_face",                  # right camera: dlib found no face
    # image-folder datasets (BP4D, DISFA+):
    "drop_list",                # --drop-list (e.g. the 271 frames JAA's BP4D lists leave out)
    "no_image",                 # a labelled frame whose image file is missing
    "image_unreadable",         # an image file that does not decode
)
#: Frames whose missing release landmarks came from the 68-point detector; kept, reported.
DETECTOR_REASON = "landmarks_from_detector"
#: Frames kept with a repaired landmark file; reported, not dropped.
FILLED_REASON = "landmarks_filled_from_neighbour"
#: Settings that change a shard's content; a rerun redoes a shard whose stored values differ.
CONTENT_FIELDS = ("size", "nose_target", "chin_target", "border", "encoding", "jpeg_quality",
                  "threshold", "au_ids", "error_log", "min_nose_chin_px", "outside_margin",
                  "detect_every", "max_detect_width", "predictor", "trim_to_shorter",
                  "pipeline_version")
_RIGHT_ONLY_FIELDS = ("detect_every", "max_detect_width", "predictor")  # dlib settings
_LEFT_ONLY_FIELDS = ("error_log",)  # the error log describes the left camera's landmarks
#: Where a shard's landmarks come from (``--landmarks``); dlib on both cameras makes the
#: cross-camera comparison one of cameras, not also of landmark sources.
LANDMARK_SOURCES = ("auto", "dlib")


@dataclass
class AlignConfig:
    """Everything ``pipeline.align`` was asked to do; stored in every shard (attr ``config``)."""

    disfa_root: str
    out: str
    camera: str = "left"  # left | right | both
    landmarks: str = "auto"  # auto: the release's for the left camera, dlib for the right; dlib
    subjects: list[str] | None = None  # None: every subject found
    jobs: int = 1
    threshold: int = DEFAULT_THRESHOLD
    au_ids: list[int] = field(default_factory=lambda: list(EVAL_AUS))
    size: int = 224
    nose_target: tuple[float, float] = DEFAULT_NOSE_FRACTION  # fractions of size (x, y)
    chin_target: tuple[float, float] = DEFAULT_CHIN_FRACTION
    border: str = "replicate"
    encoding: str = "jpeg"
    jpeg_quality: int = DEFAULT_JPEG_QUALITY
    error_log: str | None = None  # None: data_manifests/disfa_bad_frames.csv
    force: bool = False
    backend: str = "joblib"  # joblib | dask
    scheduler: str | None = None  # Dask scheduler address; None starts a local cluster
    min_nose_chin_px: float = 8.0
    outside_margin: float = 0.1  # fraction of the larger frame side a landmark may stick out
    detect_every: int = 5  # right camera: full dlib detection every N frames, tracking between
    max_detect_width: int = 640  # right camera: detector scans at most this width
    predictor: str | None = None  # right camera: dlib 68-point predictor (None: installed one)
    trim_to_shorter: bool = False  # any video/labels length difference: align the common frames
    length_tolerance: int = 2  # video and labels may differ by this many frames (warned)
    dataset: str = LEGACY_DATASET  # disfa (videos) | bp4d | disfa+ (image folders)
    alignment_rule: str = "nose-chin"  # nose-chin (the paper's) | jaa (49-point datasets)
    drop_list: str | None = None  # bp4d: "jaa" leaves out the frames JAA's lists drop
    pipeline_version: str = PIPELINE_VERSION

    def __post_init__(self) -> None:
        self.threshold = parse_threshold(self.threshold)
        self.au_ids = [int(a) for a in self.au_ids]
        if self.dataset == LEGACY_DATASET:
            au_columns(self.au_ids)  # validates
        self._check_dataset_options()
        if self.camera not in ("left", "right", "both"):
            raise ValueError(f"camera must be left, right or both, got {self.camera!r}")
        if self.landmarks not in LANDMARK_SOURCES:
            raise ValueError(f"landmarks must be one of {LANDMARK_SOURCES}, got "
                             f"{self.landmarks!r}")
        if self.encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {self.encoding!r}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be 1-100, got {self.jpeg_quality}")
        if self.backend not in ("joblib", "dask"):
            raise ValueError(f"backend must be joblib or dask, got {self.backend!r}")
        if self.backend == "dask":
            require_dask()
        if self.jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {self.jobs}")
        if self.length_tolerance < 0:
            raise ValueError(f"length_tolerance must be >= 0, got {self.length_tolerance}")
        self.nose_target = tuple(float(v) for v in self.nose_target)  # type: ignore[assignment]
        self.chin_target = tuple(float(v) for v in self.chin_target)  # type: ignore[assignment]
        if self.subjects is not None:
            # Normalised and de-duplicated, order kept ("sn1" and "1" mean SN001).
            names = [s.strip().upper() for s in self.subjects]
            names = [f"SN{int(s.removeprefix('SN')):03d}" if s.removeprefix("SN").isdigit()
                     else s for s in names]
            self.subjects = list(dict.fromkeys(names))
        self.alignment()  # validates size and targets

    def _check_dataset_options(self) -> None:
        """The options that depend on the dataset: image-folder datasets have one frontal
        camera, their own AUs and no DISFA error log; JAA's rule needs 49 points."""
        info = dataset_info(self.dataset)
        if self.alignment_rule not in ALIGNMENT_RULES:
            raise ValueError(f"alignment must be one of {ALIGNMENT_RULES}, got "
                             f"{self.alignment_rule!r}")
        if self.dataset == LEGACY_DATASET:
            if self.alignment_rule != "nose-chin" or self.drop_list:
                raise ValueError("--alignment jaa and --drop-list are for the 49-point image-"
                                 "folder datasets (--dataset bp4d or disfa+), not DISFA")
            return
        missing = [a for a in self.au_ids if info.label_source(a) == "none"]
        if missing:
            raise ValueError(f"--aus {missing}: not coded in {info.title} (its AUs: "
                             f"{list(info.au_ids)})")
        if self.camera != "left" or self.landmarks != "auto" or self.error_log:
            raise ValueError(f"--camera, --landmarks and --error-log are DISFA's; {info.title} "
                             "has one frontal camera and its own landmarks")
        if self.drop_list is not None and self.dataset != "bp4d":
            raise ValueError(f"--drop-list {self.drop_list}: only BP4D has drop lists")

    def alignment(self) -> AlignmentConfig:
        return AlignmentConfig.from_fractions(self.size, self.nose_target, self.chin_target,
                                              self.border)

    def cameras(self) -> list[str]:
        if self.dataset != LEGACY_DATASET:
            return ["frontal"]
        return ["left", "right"] if self.camera == "both" else [self.camera]

    def uses_dlib(self, camera: str) -> bool:
        """Whether ``camera``'s landmarks come from dlib: the right camera's always (the release
        ships the left camera's only), the left one's with ``landmarks="dlib"``."""
        return camera != "left" or self.landmarks == "dlib"

    def content_key(self, camera: str = "left") -> dict[str, Any]:
        """The settings that decide a ``camera`` shard's content (reruns compare these)."""
        unused = _LEFT_ONLY_FIELDS if self.uses_dlib(camera) else _RIGHT_ONLY_FIELDS
        d = dataclasses.asdict(self)
        key = {k: d[k] for k in CONTENT_FIELDS if k not in unused}
        if camera == "left" and self.uses_dlib(camera):  # absent otherwise: older keys still match
            key["landmarks"] = "dlib"
        if self.dataset != LEGACY_DATASET:  # DISFA's keys stay as they were
            key.update(dataset=self.dataset, alignment_rule=self.alignment_rule,
                       drop_list=self.drop_list)
        return json.loads(json.dumps(key, default=str))



def require_dask() -> None:
    """--backend dask needs the optional extra; say how to get it instead of an ImportError."""
    import importlib.util

    if importlib.util.find_spec("distributed") is None:
        raise ValueError("--backend dask needs Dask's distributed scheduler: "
                         "pip install -e \".[dask]\" (or pip install \"dask[distributed]\")")
