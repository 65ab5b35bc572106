"""``model.crossval --test-camera``: each fold's model on another camera, and what it compares.

A right-camera shard differs from the left one in three ways at once: it keeps the frames the
left camera drops for bad landmarks (the error log describes the left camera's AAM tracking),
it lacks the frames where dlib found no face, and it is aligned from dlib's landmarks, not the
release's (the release ships landmarks for the left camera only). ``--camera-frames matched``
(the default) evaluates both cameras on the same frames - those the left camera's test
evaluation kept and the other camera has too - so the difference is the camera's (and the
landmark source's, unless the left side is dlib-aligned as well: ``--camera-shards``).
``--camera-frames all`` compares every frame each camera kept, all three effects mixed.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline.shards import ShardReader, shard_name

from .checkpoint import CheckpointError
from .config import TrainConfig
from .data import DataError, fold_spec, open_shards
from .evaluator import evaluate_checkpoint

log = logging.getLogger("model.crossval")

CAMERA_FRAMES = ("matched", "all")


def check_camera_options(test_camera: str | None, camera_shards: str | None) -> None:
    """A ValueError naming the option when ``--camera-shards`` cannot be used."""
    if camera_shards and not test_camera:
        raise ValueError("--camera-shards is for --test-camera; add --test-camera right")
    if camera_shards and not Path(camera_shards).is_dir():
        raise ValueError(f"--camera-shards {camera_shards}: not a folder of shards")


def landmark_source(reader: ShardReader) -> str:
    """release | dlib; shards from before the attr existed: the left camera had the release's."""
    config = reader.attrs.get("config") or {}
    return str(config.get("landmark_source") or ("release" if reader.camera == "left"
                                                  else "dlib"))


def _error_log_frames(reader: ShardReader) -> np.ndarray:
    """0-based frames in the shard's error-log ranges (recorded 1-based, inclusive)."""
    ranges = (reader.attrs.get("config") or {}).get("bad_ranges") or []
    return np.unique(np.concatenate([np.arange(a - 1, b) for a, b in ranges] or [[]])
                     ).astype(np.int64)


def left_dir(train_shards: Path, camera_shards: Path, subjects: Sequence[str]) -> Path:
    """Where the left side of the comparison is read: ``camera_shards`` when it holds left
    shards of its own (e.g. dlib-aligned ones), else the shards the models trained on."""
    if camera_shards.resolve() != train_shards.resolve() and any(
            (camera_shards / shard_name(s, "left")).exists() for s in subjects):
        return camera_shards
    return train_shards


def frame_sets(train_shards: Path, camera_shards: Path, subjects: Sequence[str], camera: str,
               context: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Per subject, the frames both cameras have among those the left test kept, and the
    comparison's record: landmark source of each side and counts of frames left out, and why."""
    side = left_dir(train_shards, camera_shards, subjects)
    trained = open_shards(train_shards, subjects, ["left"], context)
    other = open_shards(camera_shards, subjects, [camera], context)
    lefts = open_shards(side, subjects, ["left"], context) if side != train_shards else trained
    common, counts = {}, {}
    for t, o, s in zip(trained, other, lefts):
        both = np.intersect1d(np.intersect1d(t.frame_index, o.frame_index), s.frame_index)
        extra = np.setdiff1d(o.frame_index, t.frame_index)
        common[t.subject] = both
        counts[t.subject] = {
            "left_test_frames": len(t), "left_side_frames": len(s), f"{camera}_frames": len(o),
            "compared": len(both),
            f"{camera}_only_error_log": int(np.isin(extra, _error_log_frames(t)).sum()),
            f"{camera}_only_other": int((~np.isin(extra, _error_log_frames(t))).sum()),
            f"left_only_{camera}_dropped": int(len(np.setdiff1d(t.frame_index, o.frame_index))),
            "left_only_left_side_dropped": int(len(np.setdiff1d(t.frame_index, s.frame_index))),
            f"{camera}_dropped_reasons": dict(o.attrs.get("dropped") or {})}
    total = {k: sum(c[k] for c in counts.values()) for k in next(iter(counts.values()))
             if not k.endswith("_reasons")}
    record = {"left_shards": str(side), "camera_shards": str(camera_shards),
              "landmarks": {"left": sorted({landmark_source(r) for r in lefts}),
                            camera: sorted({landmark_source(r) for r in other})},
              "counts": total, "per_subject": counts}
    return common, record


def test_on_camera(per_variant: dict[str, list[dict[str, Any]]], base: TrainConfig,
                   camera: str, frames: str = "matched", camera_shards: str | None = None
                   ) -> list[dict[str, Any]]:
    """Each fold's best.pt on the same held-out subjects filmed by ``camera``
    (``summary["test_camera"]``, with its ``comparison`` record). The left side is re-tested
    (``summary["test_camera_left"]``) on the common frames (``frames`` matched) or from the
    ``camera_shards``' own left shards; else it is the fold's test (``summary["test"]``)."""
    import torch

    if frames not in CAMERA_FRAMES:
        raise ValueError(f"--camera-frames must be one of {CAMERA_FRAMES}, got {frames!r}")
    device = base.device if base.device != "auto" else ("cuda" if torch.cuda.is_available()
                                                        else "cpu")
    shards, other = Path(base.shards), Path(camera_shards or base.shards)
    failures, sets = [], {}
    for variant, results in per_variant.items():
        for r in results:
            fold = r["fold"]
            try:
                if fold not in sets:
                    subjects = fold_spec(base.manifest, fold).subjects["test"]
                    sets[fold] = frame_sets(shards, other, subjects, camera,
                                            f"{base.manifest} fold {fold}")
                    _warn_if_sources_differ(sets[fold][1], camera, fold)
                common, record = sets[fold]
                keep = common if frames == "matched" else None
                run = dict(variant=variant, batch_size=base.eval_batch_size, device=device,
                           keep_frames=keep)
                best = Path(r["run_dir"]) / "best.pt"
                tested = evaluate_checkpoint(best, other, base.manifest, fold,
                                             cameras=[camera], **run)
                if frames == "matched" or Path(record["left_shards"]) != shards:
                    left = evaluate_checkpoint(best, Path(record["left_shards"]), base.manifest,
                                               fold, cameras=["left"], **run)
                    r["test_camera_left"] = {**left["metrics"], "camera": "left"}
            except (DataError, CheckpointError, ValueError) as err:
                log.error("%s fold %d on the %s camera failed: %s", variant, fold, camera, err)
                failures.append({"variant": variant, "fold": fold, "camera": camera,
                                 "error": str(err)})
                continue
            r["test_camera"] = {**tested["metrics"], "camera": camera,
                                "comparison": {"frames": frames, **record}}
    return failures


def _warn_if_sources_differ(record: dict[str, Any], camera: str, fold: int) -> None:
    marks = record["landmarks"]
    if marks["left"] != marks[camera]:
        log.warning("fold %d: the left side is aligned from %s landmarks, the %s camera from %s: "
                    "the difference holds both effects (--camera-shards with left shards from "
                    "pipeline.align --landmarks dlib matches them)", fold,
                    "/".join(marks["left"]), camera, "/".join(marks[camera]))


def describe(comparisons: Sequence[dict[str, Any]], camera: str) -> list[str]:
    """The table's note lines: which frames, which landmarks, and how many frames left out."""
    first = comparisons[0]
    frames, marks = first["frames"], first["landmarks"]
    counts = {k: sum(c["counts"][k] for c in comparisons) for k in first["counts"]}
    left_marks, other_marks = "/".join(marks["left"]), "/".join(marks[camera])
    lines = [f"Landmarks: left aligned from {left_marks} landmarks, {camera} from "
             f"{other_marks} landmarks"
             + ("" if left_marks == other_marks else
                " (they differ, so the difference also holds the landmark source's effect; "
                "--camera-shards with dlib-aligned left shards matches them)")]
    if frames == "matched":
        lines.append(
            f"Frames (--camera-frames matched): both cameras on the same {counts['compared']} "
            f"frames, those the left test kept ({counts['left_test_frames']}) that the {camera} "
            f"camera has too; left out: {counts[f'left_only_{camera}_dropped']} the {camera} "
            f"camera lacks (dlib: no face or unusable landmarks), "
            f"{counts['left_only_left_side_dropped']} the left side's shards lack, and "
            f"{counts[f'{camera}_only_error_log']} + {counts[f'{camera}_only_other']} {camera} "
            f"frames the left camera drops (error log + its landmark checks)")
    else:
        lines.append(
            f"Frames (--camera-frames all): every frame each camera kept, left "
            f"{counts['left_side_frames']}, {camera} {counts[f'{camera}_frames']} (of them "
            f"{counts[f'{camera}_only_error_log']} in the left camera's error log and "
            f"{counts[f'{camera}_only_other']} it drops otherwise; "
            f"{counts[f'left_only_{camera}_dropped']} left frames the {camera} camera lacks): "
            "the difference mixes camera, frame set and landmark source")
    return lines
