"""model.demo's datasets: the options each twin takes, and the BP4D twin's data steps.

``--dataset disfa`` (the default) is the DISFA demo, unchanged. ``--dataset bp4d`` runs the same
chain on a BP4D twin (``pipeline.synth --layout bp4d``: both release variants and their quirks),
aligned with JAA's eye/nose/mouth rule on the shipped 49 points (BP4D has no chin point; the
detector is used only for the frames the twin ships without landmarks), kfold folds with
validation subjects, occurrence only (BP4D codes intensity for 5 AUs, in one variant), each fold
scored on its held-out twin subjects over BP4D's 12 AUs ("not coded" frames masked). There is no
``model.predict`` stage: the BP4D twin ships frames, not videos.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from .cli import CommandError

log = logging.getLogger("model.demo")

DATASETS = ("disfa", "bp4d")
#: Per dataset, the value an option left unset takes (DISFA's epochs and patience: the cpu-demo
#: recipe's). BP4D's 12 AUs include subtle ones (7, 14, 15) that the small model learns late:
#: at the recipe's 32 epochs the held-out mean F1 stayed at 59-72 % a fold; 64 epochs (patience
#: 16) reached 89.9 % over the 3 folds in 398 s on 2 idle cores (docs/bp4d.md "Demo"). Its
#: frames are portrait like the release's, at a quarter of the size.
DEFAULTS: dict[str, dict[str, Any]] = {
    "disfa": {"n_subjects": 27, "frames": 200, "frame_width": 320, "frame_height": 240,
              "task": "both", "predict_subjects": 3},  # epochs, patience: DEMO_RECIPE's
    "bp4d": {"n_subjects": 18, "frames": 400, "frame_width": 260, "frame_height": 348,
             "task": "occurrence", "predict_subjects": 0, "epochs": 64, "patience": 16},
}
#: The alignment of the BP4D demo. Both rules align the same frames of the twin (177 of 180 on
#: 3 subjects x 60 frames, measured; the 3 lost rows have no image); JAA's uses only the shipped
#: 49 points (nose-chin takes its chin from dlib's 68-point tracker on every frame) and is the
#: rule BP4D's published results use.
BP4D_ALIGNMENT = "jaa"
#: BP4D twin subjects in all (the release's 41).
BP4D_SUBJECTS = 41
#: Tasks (sequences) per twin subject, ``--frames`` split over them. Short sequences crowd the
#: faces: every AU gets an episode in every sequence, so at 80 frames a sequence about 3.6 of the
#: 12 AUs show at once, at 200 about 1.9 (DISFA's twin: fewer), and the mouth AUs' opposite
#: motions (12/14 out, 23 in, 15 down) blur each other.
BP4D_TASKS = 2


#: The recipe model.demo trains by (model/recipes/cpu-demo.json).
DEMO_RECIPE = "cpu-demo"


def dataset_defaults(dataset: str) -> dict[str, Any]:
    """``DEFAULTS[dataset]``, with the epochs and patience of ``DEMO_RECIPE`` where the dataset
    sets none (DISFA's demo trains by the recipe)."""
    from .engine.recipes import load_recipe

    recipe = load_recipe(DEMO_RECIPE).settings
    return {"epochs": recipe["epochs"], "patience": recipe["patience"], **DEFAULTS[dataset]}


def default_help(option: str) -> str:
    """'(default: 27 for disfa, 15 for bp4d)' for the help of a per-dataset option."""
    return "(default: " + ", ".join(f"{dataset_defaults(d)[option]} for {d}"
                                    for d in DATASETS) + ")"


def add_dataset_options(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """``--dataset`` and the twin's size options (their defaults depend on the dataset); returns
    the "twin" group for the options every dataset shares."""
    p.add_argument("--dataset", choices=DATASETS, default="disfa",
                   help="the twin the demo runs on: disfa (the main demo) or bp4d (BP4D's layout "
                        "and 12 AUs, JAA alignment, occurrence only, no model.predict stage; "
                        "docs/bp4d.md)")
    twin = p.add_argument_group("twin")
    twin.add_argument("--n-subjects", type=int, default=None,
                      help="twin subjects: DISFA's first N, or BP4D's taken in turn from its 3 "
                           "parts " + default_help("n_subjects"))
    twin.add_argument("--frames", type=int, default=None,
                      help="frames per subject " + default_help("frames"))
    twin.add_argument("--frame-width", type=int, default=None,
                      help="twin frame width " + default_help("frame_width"))
    twin.add_argument("--frame-height", type=int, default=None,
                      help="twin frame height " + default_help("frame_height"))
    return twin


def resolve_dataset_options(args: argparse.Namespace) -> None:
    """Fill the options left unset with the dataset's defaults; refuse (CommandError, one line)
    an option that does not apply to the dataset."""
    dataset = getattr(args, "dataset", "disfa")
    if dataset == "bp4d":
        if args.task not in (None, "occurrence"):
            raise CommandError(f"--task {args.task}: the BP4D demo trains occurrence only (BP4D "
                               "codes intensity for 5 AUs, in the FERA 2015 files alone)")
        if args.predict_subjects:
            raise CommandError("--predict-subjects: the BP4D demo has no model.predict stage "
                               "(its twin ships frames, not videos)")
        if args.n_subjects is not None and args.n_subjects > BP4D_SUBJECTS:
            raise CommandError(f"--n-subjects {args.n_subjects}: BP4D has {BP4D_SUBJECTS} "
                               "subjects")
    for name, value in dataset_defaults(dataset).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if dataset == "bp4d":
        _check_bp4d_twin(args)


def _check_bp4d_twin(args: argparse.Namespace) -> None:
    from pipeline.twin.bp4d_layout import BP4DTwinConfig

    try:  # the twin's own checks, before any folder is touched
        BP4DTwinConfig(n_subjects=args.n_subjects, frames=args.frames, seed=args.seed,
                       width=args.frame_width, height=args.frame_height)
    except ValueError as err:
        raise CommandError(f"--dataset bp4d: {err}") from None


def prepare_bp4d(args: argparse.Namespace, out: Path, watch: Any) -> dict[str, Any]:
    """Steps 1-3 on BP4D: the twin, its shards (JAA alignment) and the kfold manifest."""
    from pipeline.align import AlignConfig, run_align
    from pipeline.build_folds import FoldConfig, build_folds, write_folds
    from pipeline.datasets.registry import dataset_info
    from pipeline.twin.bp4d_layout import BP4DTwinConfig, synthesize_bp4d

    twin, shards = out / "bp4d_twin", out / "shards"
    with watch.stage("synthesize"):
        synth = synthesize_bp4d(twin, BP4DTwinConfig(
            n_subjects=args.n_subjects, frames=args.frames, tasks=BP4D_TASKS, seed=args.seed,
            width=args.frame_width, height=args.frame_height, variant="both"))
        log.info("BP4D twin: %d subjects x %d frames in %s", len(synth["subjects"]),
                 args.frames, twin)
    with watch.stage("align"):
        align = run_align(AlignConfig(disfa_root=str(twin), out=str(shards), size=args.size,
                                      jobs=args.jobs, dataset="bp4d",
                                      au_ids=list(dataset_info("bp4d").eval_aus),
                                      alignment_rule=BP4D_ALIGNMENT))
        if align.get("failed"):
            raise RuntimeError(f"alignment failed for {align['failed']}")
    with watch.stage("folds"):
        manifest = build_folds(shards, FoldConfig(scheme="kfold", k=args.k, seed=args.seed,
                                                  val_subjects=args.val_subjects,
                                                  camera="frontal"))
        manifest_path = write_folds(manifest, out)
    return {"twin": twin, "shards": shards, "synth": synth, "align": align,
            "manifest": manifest, "manifest_path": manifest_path,
            "alignment_rule": BP4D_ALIGNMENT}
