"""model.demo's step 6: ``model.predict`` on the DISFA twin's raw videos of held-out subjects,
scored against the twin's labels (the numbers a user of ``model.predict`` gets)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger("model.demo")


def predict_and_score(checkpoint: Path, twin: Path, subjects: Sequence[str], out: Path,
                      quiet: bool = False, **options: Any) -> dict[str, Any]:
    """Run ``model.predict`` on the subjects' left videos and score its decisions (and AUxx_r
    intensities, when the checkpoint has them) against the twin's labels, pooled over all their
    frames (a frame without a face counts as 'absent', intensity 0).
    ``options``: further :class:`PredictConfig` fields (e.g. ``calibrate=True, smooth=5``)."""
    import numpy as np

    from pipeline.datasets.disfa.facts import au_columns
    from pipeline.datasets.disfa import discover, read_labels
    from pipeline.shards import binarize

    from .evaluation.intensity import IntensityAccumulator
    from .inference.csv_format import read_predictions
    from .evaluation.metrics import confusion_counts, metrics_from_counts
    from .predict import PredictConfig, run_predict

    layout = discover(twin)
    files = [layout.subjects[s] for s in subjects]
    summary = run_predict(PredictConfig(checkpoint=checkpoint, out=out,
                                        videos=[f.videos["left"] for f in files],
                                        plot=True, progress=not quiet, **options))
    data = summary["checkpoint"]  # the checkpoint's metadata, as model.predict read it
    au_ids, threshold = [int(a) for a in data["au_ids"]], int(data["threshold"])
    # model.predict writes AUxx_r for the occurrence AUs the intensity head also covers.
    intensity_aus = [a for a in au_ids if a in data["model_config"].get("intensity_aus", ())]
    regression = (IntensityAccumulator(intensity_aus, mean_over=au_ids, subjects=subjects)
                  if intensity_aus else None)
    counts, frames, faces = 0, 0, 0
    for subject, (f, result) in enumerate(zip(files, summary["inputs"])):
        if result.get("status", "ok") != "ok" or not result.get("csv"):
            raise RuntimeError(f"model.predict failed on {f.videos['left']}: {result}")
        table = read_predictions(result["csv"])
        coded = read_labels(f)
        truth = binarize(coded, au_ids, threshold)
        if len(table) != len(truth):
            raise RuntimeError(f"{result['csv']}: {len(table)} rows for {len(truth)} labels")
        c_columns = [f"AU{au:02d}_c" for au in au_ids]
        if all(c in table.columns for c in c_columns):  # not for an untrained occurrence head
            decided = table[c_columns].fillna(0).to_numpy(np.float32)
            counts = counts + confusion_counts(decided, truth, from_logits=False)
        if regression is not None:
            levels = table[[f"AU{au:02d}_r" for au in intensity_aus]].fillna(0).to_numpy()
            regression.update(levels, coded[:, au_columns(intensity_aus)],
                              groups=np.full(len(levels), subject))
        frames += len(table)
        faces += int(table["face_found"].sum())
    if faces < 0.5 * frames:
        log.warning("dlib found a face in only %d of %d frames: the twin's faces are too small "
                    "for its detector at this frame size (use --frame-width 320 or more)",
                    faces, frames)
    scored = {"checkpoint": str(checkpoint), "out": str(out), "subjects": list(subjects),
              "frames": frames, "faces_found": faces,
              "processing_fps": [r.get("processing_fps") for r in summary["inputs"]]}
    if not isinstance(counts, int):  # some AUxx_c were scored
        scored["metrics"] = metrics_from_counts(counts, au_ids).as_dict()
    if regression is not None:
        scored["intensity"] = regression.compute().as_dict()
    return scored
