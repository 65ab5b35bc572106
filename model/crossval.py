"""Cross-validation over the folds of a manifest, and the paper's Tables 1 and 2 beside ours.

    python -m model.crossval --shards SHARDS --manifest SHARDS/folds.json --out runs/cv
    python -m model.crossval ... --ablations          # every Table 2 variant as well

Each (variant, fold) trains into ``OUT/<variant>/fold<k>`` with the training options given
(the paper's recipe by default) and is evaluated on the fold's test subjects with its best.pt.
A finished run is reused and an interrupted one resumed, so rerunning the command continues
where it stopped; a run recorded with other training settings is refused (the message names
them) unless ``--fresh`` redoes it. A fold that fails is reported and the others still run.

Writes ``OUT/table1.{csv,md}`` (TRA-Net: per-AU F1 and accuracy, mean of folds, beside the
paper's TRA column), ``OUT/table2.{csv,md}`` (F1 of each variant beside the paper's rows and its
paired difference to TRA-Net, with --ablations), ``OUT/per_subject_<variant>.png`` (F1 per
held-out subject and AU) and ``OUT/crossval.json`` (per-subject results included). Each F1 and
accuracy has a 95% interval from a subject-level bootstrap (``--bootstrap N``). Every table
states the label threshold and selection protocol of our numbers and of the paper's, and the
recipe (variant, preset, backbone and weights, image size, selection, folds) of ours.

    python -m model.crossval ... --compare senet50 tranet    # paired test of two variants
    python -m model.crossval --out runs/cmp --compare runs/cvA runs/cvB   # of two run folders
    python -m model.crossval --out runs/cmp --compare runs/a0,runs/a1 runs/b0,runs/b1  # seeds
    python -m model.crossval ... --test-camera right         # train left, test left and right
    python -m model.crossval ... --test-camera right --camera-frames all   # every frame each kept
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Sequence


from pipeline.cli import HelpFormatter
from pipeline.cli import int_range


from .cli import handle_errors, setup_logging
from .engine.camera_eval import CAMERA_FRAMES
from .engine.checkpoint import CheckpointError
from .engine.run_folder import RunFolder
from .engine.cross_validation import crossval, run_fold, table1, table2  # noqa: F401  (re-exported)
from .engine.data import DataError
from .weights.precheck import check_pretrained_option
from .weights.vggface2 import WeightsError
from .evaluation.paper_tables import TABLE2_ORDER
from .evaluate import add_bootstrap_options
from .train import add_training_options, explicit_options

log = logging.getLogger("model.crossval")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m model.crossval",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--shards", help="folder of aligned shards (required unless --compare "
                                     "names two run folders)")
    p.add_argument("--manifest", help="folds.json (pipeline.build_folds); required like --shards")
    p.add_argument("--out", required=True, help="folder for the runs and the tables")
    p.add_argument("--folds", type=int_range(1), nargs="+", default=None,
                   help="folds to run (default: every fold of the manifest)")
    p.add_argument("--ablations", action="store_true",
                   help="also train every Table 2 variant and write table2")
    p.add_argument("--variants", nargs="+", default=None, choices=list(TABLE2_ORDER),
                   help="variants to run (default: tranet; with --ablations: all of Table 2)")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), default=None,
                   help="paired comparison F1(A) - F1(B), per AU and mean: subject-bootstrap 95%% "
                        "CI and sign-flip permutation p (per AU Holm-corrected); A and B are "
                        "variants (trained here if needed) or model.crossval output folders, "
                        "several joined by commas for several training seeds a side (then "
                        "nothing is trained and seed variance is included); refused when the "
                        "two sides differ in protocol; writes OUT/compare.{md,csv,json} "
                        "(default: no comparison)")
    p.add_argument("--allow-protocol-mismatch", action="store_true",
                   help="compare (--compare, Table 2) sides that differ in label threshold, "
                        "folds' subjects, AUs, camera, landmark source, task, input size or "
                        "model selection; the output is labelled PROTOCOL MISMATCH (default: "
                        "refuse, naming each difference)")
    p.add_argument("--test-camera", choices=["right"], default=None,
                   help="also test each fold's best.pt on the same held-out subjects filmed by "
                        "this camera (shards from pipeline.align --camera right) while training "
                        "on the left; writes OUT/cameras_<variant>.{md,csv} (default: off)")
    p.add_argument("--camera-frames", choices=list(CAMERA_FRAMES), default="matched",
                   help="--test-camera's frames: matched = both cameras on the frames the left "
                        "test kept that the other camera has too (the camera's effect); all = "
                        "every frame each camera kept (also the error-log frames the left "
                        "camera drops and without the frames dlib finds no face in)")
    p.add_argument("--camera-shards", default=None, metavar="DIR",
                   help="--test-camera's shards (default: --shards); when DIR also holds left "
                        "shards (pipeline.align --camera both --landmarks dlib), the left side "
                        "is read from there, so both sides share dlib's landmarks")
    add_bootstrap_options(p)
    p.add_argument("--fresh", action="store_true",
                   help="retrain the runs of the chosen variants and folds, replacing each "
                        "once its new run has started (needed when their recorded settings or "
                        "fold subjects differ from this command's)")
    add_training_options(p)
    return p


@handle_errors("model.crossval")
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.quiet)
    check_pretrained_option(args.pretrained, args.backbone)  # before any fold reads data
    try:
        with RunFolder(args.out, "model.crossval"):  # one writer; its fold runs lock theirs
            report = crossval(args, explicit_options(parser, argv))
    except (DataError, CheckpointError, WeightsError, ValueError) as err:
        log.error("%s", err)
        return 1
    except KeyboardInterrupt:
        log.error("aborted; rerun the same command to resume")
        return 130
    for text in report.get("texts", []):
        print(text)
    if report.get("failures"):
        print("failed or unfinished:", json.dumps(report["failures"]))
    print(f"tables and runs in {args.out}")
    return 0 if report["status"] == "finished" and not report.get("failures") else 1


if __name__ == "__main__":
    raise SystemExit(main())
