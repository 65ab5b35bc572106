"""The BP4D twin: a release in BP4D's layouts (both shipped variants) with learnable faces.

    python -m pipeline.synth --layout bp4d --out data/bp4d_twin --n-subjects 3 --frames 120

It reproduces what a BP4D loader trips over (BP4D_FACTS.md, "Quirks checklist"): the FERA 2015
variant (``BP4D-training/F001/T1/<n>.jpg``, ``AUCoding/F001_T1.csv``, ``AU Intensity
Codes3.0/AU06/`` or ``AU-Intensity-Codes3.0``, MATLAB v5 landmarks in ``BP4D-fpoints/``) and the
full release (``AUCoding/AU_OCC/F001_T1.csv``, v7.3 ``2DFeatures/F001_T1.mat`` with ``fit/pred``,
frames in a deeper folder); portrait frames; zero padding that varies per sequence; sequences
starting past frame 1; 9 codes in evaluated AUs and intensities; a CSV header with 64 AU columns
(those >= 40 all 9); coded frames without landmarks; a CSV row without its image; a missing
intensity row. ``synth_truth.json`` records all of it, and marks the root as the twin.

Faces are drawn by the DISFA twin's renderer from its episode schedule, each of the 12 BP4D AUs
as itself (the renderer draws BP4D's 7, 10, 14, 23 and 24 too); see :func:`drawn_au`.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from ..datasets.bp4d import facts as bp4d
from ..datasets.bp4d.folds import standard_folds
from ..datasets.disfa.facts import ALL_AUS as DISFA_AUS
from .bp4d_files import write_mat_v5, write_mat_v73, write_text
from .config import TRUTH_JSON
from .episodes import au_schedule, pose_track
from .face_render import background_image, noise_bank, render_frame
from .face_shape import face_shape, sample_identity

log = logging.getLogger("pipeline.synth")

BP4D_TWIN_VERSION = 2  # 2: AUs 7, 10, 14, 23, 24 drawn as themselves
#: Portrait like the release's 1040 x 1392, at a quarter of the size (speed).
FRAME_SIZE = (260, 348)
VARIANTS = ("fera", "full", "both")
#: The episode timeline each BP4D AU follows: its own, or (for the AUs DISFA does not code) that
#: of an unused DISFA AU of the same face region, so the twin's co-occurrences stay plausible.
TIMELINE = {7: 5, 10: 9, 14: 20, 23: 25, 24: 26}
#: BP4D AUs drawn as another AU. Empty: the renderer draws 7, 10, 14, 23 and 24 itself
#: (``face_shape.EXTRA_AUS``); twins written before that (version 1) drew them as DISFA's 5, 9,
#: 20, 25 and 26.
STAND_INS: dict[int, int] = {}
#: A frame's AU is coded present at this twin intensity or more (the renderer's visible jump).
OCCURRENCE_MIN = 3
HEADER_AUS = tuple(range(1, 65))
PAD_FORMATS = ("{:d}", "{:04d}", "{:05d}")
INTENSITY_DIRS = ("AU Intensity Codes3.0", "AU-Intensity-Codes3.0")


def drawn_au(au: int) -> int:
    """The AU the renderer draws for BP4D AU ``au``: itself, now that the renderer draws all 12
    (``STAND_INS`` is the one place a stand-in would go)."""
    return STAND_INS.get(au, au)


@dataclass
class BP4DTwinConfig:
    """What decides the BP4D twin's content (recorded in ``synth_truth.json``)."""

    subjects: tuple[str, ...] | None = None
    n_subjects: int = 3
    frames: int = 120  # coded frames per subject, split over its tasks
    tasks: int = 2
    seed: int = 0
    width: int = FRAME_SIZE[0]
    height: int = FRAME_SIZE[1]
    variant: str = "both"
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"--bp4d-variant must be one of {', '.join(VARIANTS)}")
        if not 1 <= self.tasks <= len(bp4d.TASKS):
            raise ValueError(f"--tasks must be 1..{len(bp4d.TASKS)}, got {self.tasks}")
        if self.frames < 12 * self.tasks:
            raise ValueError(f"--frames must be >= {12 * self.tasks} (12 per task) for BP4D")
        if not 1 <= self.n_subjects <= len(bp4d.SUBJECTS):
            raise ValueError(f"--n-subjects must be 1..{len(bp4d.SUBJECTS)}")
        if self.subjects is not None:
            self.subjects = tuple(s.strip().upper() for s in self.subjects)
            unknown = [s for s in self.subjects if s not in bp4d.SUBJECTS]
            if unknown:
                raise ValueError(f"unknown BP4D subjects {unknown}; BP4D has F001-F023, M001-M018")


def chosen_subjects(cfg: BP4DTwinConfig) -> list[str]:
    """``--subjects``, else the first N taken in turn from the standard parts (part1's first,
    part2's first, part3's first, part1's second...), so any N >= 3 covers every part."""
    if cfg.subjects:
        return list(dict.fromkeys(cfg.subjects))
    parts = standard_folds()["parts"]
    order = [p[i] for i in range(max(map(len, parts))) for p in parts if i < len(p)]
    return order[: cfg.n_subjects]


@dataclass
class SequencePlan:
    """One twin sequence: where and how its files are written, and its planted quirks."""

    subject: str
    task: str
    variant: str  # "fera" or "full"
    first_frame: int
    n: int
    pad: str
    not_coded: tuple[int, int, int]  # (AU, first row, rows) set to 9
    no_landmarks: tuple[int, int]  # (first row, rows) without landmarks
    no_image_row: int | None  # a CSV row whose image is not written
    landmark_rows: str  # "csv" (one per CSV row) or "video" (frames 1..last)
    mat_layout: str  # v5 only: "N,49,2" or "49,2,N"
    seed: tuple[int, int]

    @property
    def frame_numbers(self) -> np.ndarray:
        return np.arange(self.first_frame, self.first_frame + self.n)


def plan_sequences(cfg: BP4DTwinConfig) -> list[SequencePlan]:
    """Every sequence's plan, decided up front from the seed."""
    rng = np.random.default_rng([cfg.seed, 26])
    plans = []
    for s_index, subject in enumerate(chosen_subjects(cfg)):
        variant = cfg.variant if cfg.variant != "both" else VARIANTS[s_index % 2]
        sizes = [cfg.frames // cfg.tasks] * cfg.tasks
        sizes[0] += cfg.frames - sum(sizes)
        for t_index, n in enumerate(sizes):
            k = len(plans)
            first = 1 if k % 3 == 0 else int(rng.integers(2, 2441))
            evaluated = bp4d.OCCURRENCE_AUS[int(rng.integers(len(bp4d.OCCURRENCE_AUS)))]
            plans.append(SequencePlan(
                subject=subject, task=bp4d.TASKS[t_index], variant=variant, first_frame=first,
                n=n, pad=PAD_FORMATS[k % len(PAD_FORMATS)],
                not_coded=(int(evaluated), int(rng.integers(0, n - 3)), 3),
                no_landmarks=(int(rng.integers(0, n - 4)), 4),
                no_image_row=n - 1 if t_index == 0 else None,
                landmark_rows="video" if variant == "full" and k % 2 else "csv",
                mat_layout="49,2,N" if k % 2 else "N,49,2",
                seed=(int(cfg.seed), k)))
    return plans


def sequence_intensity(plan: SequencePlan) -> np.ndarray:
    """Twin intensities ``[n, 12]`` 0-5 in BP4D's OCCURRENCE_AUS order: the DISFA twin's
    episodes, plus one planted episode for each AU still without a coded frame."""
    rng = np.random.default_rng(list(plan.seed))
    schedule = au_schedule(plan.n, rng)
    out = np.stack([schedule[:, DISFA_AUS.index(TIMELINE.get(au, au))]
                    for au in bp4d.OCCURRENCE_AUS], axis=1)
    return _ensure_coverage(out, rng)


def _ensure_coverage(intensity: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Every AU at >= OCCURRENCE_MIN somewhere in the sequence: the DISFA schedule leaves the
    timelines BP4D borrows for AUs 7, 14 (DISFA's rare 5, 20), 15 and 17 often empty, and an AU
    with no positive frame cannot be learned or scored."""
    n = len(intensity)
    for j in range(intensity.shape[1]):
        if intensity[:, j].max() >= OCCURRENCE_MIN:
            continue
        length = int(min(n, rng.integers(14, 41)))
        start = int(rng.integers(0, n - length + 1))
        ramp = np.minimum(np.arange(1, length + 1), np.arange(length, 0, -1)) / 4.0
        apex = int(rng.integers(OCCURRENCE_MIN, 6))
        values = np.rint(np.minimum(ramp, 1.0) * apex).astype(np.uint8)
        intensity[start:start + length, j] = np.maximum(intensity[start:start + length, j], values)
    return intensity


def _drawn(intensity_row: np.ndarray) -> dict[int, float]:
    return {drawn_au(au): float(v) for au, v in zip(bp4d.OCCURRENCE_AUS, intensity_row)}


def render_sequence(plan: SequencePlan, cfg: BP4DTwinConfig, folder: Path,
                    intensity: np.ndarray) -> np.ndarray:
    """Write the frames as JPEGs (named with the plan's padding); returns the true 49 points
    ``[n, 49, 2]`` (0-based)."""
    rng = np.random.default_rng([*plan.seed, 1])
    identity = sample_identity(np.random.default_rng([cfg.seed, *map(ord, plan.subject)]))
    poses = pose_track(plan.n, rng, cfg.width, cfg.height)
    background = background_image(cfg.width, cfg.height, identity, rng)
    noise = noise_bank(cfg.width, cfg.height, rng, n=2)
    folder.mkdir(parents=True, exist_ok=True)
    points = np.empty((plan.n, bp4d.N_LANDMARKS, 2), dtype=np.float64)
    quality = [int(cv2.IMWRITE_JPEG_QUALITY), cfg.jpeg_quality]
    for i, frame in enumerate(plan.frame_numbers):
        drawn = _drawn(intensity[i])
        points[i] = face_shape(identity, drawn, poses[i])[17:]  # 66 points less the jaw
        if i == plan.no_image_row:
            continue
        image = render_frame(background, identity, drawn, poses[i], poses[i].scale * 0.004,
                             noise[i % len(noise)])
        cv2.imwrite(str(folder / f"{plan.pad.format(int(frame))}.jpg"), image, quality)
    return points


def occurrence_rows(plan: SequencePlan, intensity: np.ndarray) -> str:
    """The occurrence CSV: header ``0,1,...,64``, evaluated AUs from the twin (9 in the planted
    block), other AUs < 40 sparse 0/1, AUs >= 40 all 9."""
    rng = np.random.default_rng([*plan.seed, 2])
    occ = (intensity >= OCCURRENCE_MIN).astype(int)
    au, start, rows = plan.not_coded
    occ[start:start + rows, bp4d.OCCURRENCE_AUS.index(au)] = bp4d.NOT_CODED_CODE
    lines = [",".join(["0", *map(str, HEADER_AUS)])]
    for i, frame in enumerate(plan.frame_numbers):
        cells = [str(frame)]
        for k in HEADER_AUS:
            if k in bp4d.OCCURRENCE_AUS:
                cells.append(str(occ[i, bp4d.OCCURRENCE_AUS.index(k)]))
            else:
                cells.append("9" if k >= 40 else str(int(rng.random() < 0.1)))
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n"


def write_intensity(out: Path, plan: SequencePlan, intensity: np.ndarray, folder: str) -> int:
    """FERA 2015 intensity files for the 5 AUs; the first AU's file lacks one row and has one
    9. Returns how many rows are missing."""
    for j, au in enumerate(bp4d.INTENSITY_AUS):
        col = intensity[:, bp4d.OCCURRENCE_AUS.index(au)].astype(int)
        lines = []
        for i, frame in enumerate(plan.frame_numbers):
            if j == 0 and i == 1:
                continue  # the missing row
            value = bp4d.NOT_CODED_CODE if (j == 0 and i == 2) else col[i]
            lines.append(f"{frame},{value}\n")
        name = f"AU{au:02d}"
        write_text(out / folder / name / f"{plan.subject}_{plan.task}_{name}.csv", "".join(lines))
    return 1


def write_sequence(out: Path, plan: SequencePlan, cfg: BP4DTwinConfig) -> dict:
    """All files of one sequence; returns its truth record."""
    intensity = sequence_intensity(plan)
    key = f"{plan.subject}_{plan.task}"
    if plan.variant == "fera":
        frames_dir = out / "BP4D-training" / plan.subject / plan.task
        csv_path = out / "AUCoding" / f"{key}.csv"
    else:
        frames_dir = out / "BP4D-Spontaneous" / "2D" / plan.subject / plan.task
        csv_path = out / "AUCoding" / "AU_OCC" / f"{key}.csv"
    points = render_sequence(plan, cfg, frames_dir, intensity)
    write_text(csv_path, occurrence_rows(plan, intensity))
    first, rows = plan.no_landmarks
    pts1 = points + 1.0 + np.random.default_rng([*plan.seed, 3]).normal(0, 0.2, points.shape)
    pts1[first:first + rows] = np.nan
    missing_int = 0
    if plan.variant == "fera":
        folder = INTENSITY_DIRS[cfg.seed % 2]
        missing_int = write_intensity(out, plan, intensity, folder)
        write_mat_v5(out / "BP4D-fpoints" / f"{key}.mat", pts1, plan.mat_layout)
    else:
        if plan.landmark_rows == "video":  # the file covers frames 1..last
            lead = np.full((plan.first_frame - 1, *pts1.shape[1:]), np.nan)
            pts1 = np.concatenate([lead, pts1])
        write_mat_v73(out / "2DFeatures" / f"{key}.mat", pts1)
    truth = asdict(plan)
    truth.update(frames_dir=frames_dir.relative_to(out).as_posix(),
                 occurrence_csv=csv_path.relative_to(out).as_posix(),
                 missing_intensity_rows=missing_int,
                 positives={str(au): int((intensity[:, j] >= OCCURRENCE_MIN).sum())
                            for j, au in enumerate(bp4d.OCCURRENCE_AUS)})
    return truth


def synthesize_bp4d(out: Path, cfg: BP4DTwinConfig) -> dict:
    """Write the whole twin under ``out`` (replacing an earlier BP4D twin there); returns the
    truth, also saved as ``out/synth_truth.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("BP4D-training", "BP4D-Spontaneous", "AUCoding", "BP4D-fpoints",
                 "2DFeatures", *INTENSITY_DIRS):
        shutil.rmtree(out / name, ignore_errors=True)  # a rerun must not mix two twins
    sequences = {}
    for plan in plan_sequences(cfg):
        log.info("%s/%s (%s): %d frames from %d", plan.subject, plan.task, plan.variant,
                 plan.n, plan.first_frame)
        sequences.setdefault(plan.subject, {})[plan.task] = write_sequence(out, plan, cfg)
    truth = {"layout": "bp4d", "version": BP4D_TWIN_VERSION, "config": asdict(cfg),
             "occurrence_rule": f"twin intensity >= {OCCURRENCE_MIN}",
             "stand_ins": {str(k): v for k, v in STAND_INS.items()},
             "subjects": sequences}
    write_text(out / TRUTH_JSON, json.dumps(truth, indent=1, sort_keys=True, default=list))
    return truth


def run_from_args(args) -> int:
    """``pipeline.synth --layout bp4d``: write the twin and print one line per sequence."""
    cfg = BP4DTwinConfig(
        subjects=tuple(args.subjects) if args.subjects else None, n_subjects=args.n_subjects,
        frames=args.frames, tasks=args.tasks, seed=args.seed,
        width=args.width or FRAME_SIZE[0], height=args.height or FRAME_SIZE[1],
        variant=args.bp4d_variant, jpeg_quality=args.jpeg_quality)
    truth = synthesize_bp4d(args.out, cfg)
    print(f"{'sequence':10} {'variant':7} {'first':>5} {'frames':>6}")
    for subject, tasks in truth["subjects"].items():
        for task, seq in tasks.items():
            print(f"{subject}/{task:6} {seq['variant']:7} {seq['first_frame']:5d} {seq['n']:6d}")
    print(f"wrote the BP4D twin to {os.fspath(args.out)}")
    return 0
