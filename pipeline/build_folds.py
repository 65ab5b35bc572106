"""Subject-independent folds, validation hold-outs and per-AU loss weights from aligned shards.

    python -m pipeline.build_folds --shards shards/ --out folds/            # DISFA's 3 parts
    python -m pipeline.build_folds --shards twin/ --out folds/ --scheme kfold --k 3

Writes ``OUT/folds.json`` (schema in the notes/CONTRACTS): per fold the train / val / test
subjects, their frame counts and per-AU positive rates, and the per-AU loss weights of the
peers' formula computed on the TRAIN subjects only.

Validation: peers select models on the test fold (test-set leakage). Here every fold holds out
validation subjects from its training subjects: for ``disfa3`` the manifest's rule (the
first-listed subject of each training part), for ``kfold`` the first ``--val-subjects`` subjects
of the lowest-numbered training part in the seeded order (so with k=3, folds 2 and 3 share
theirs). Model selection therefore never sees a test subject.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .datasets.disfa.facts import standard_folds
from .datasets.registry import is_known_subject
from .shards import ShardError, ShardReader
from .cli import (HelpFormatter, CommandError, atomic_write_text, check_out_dir, handle_errors, int_range,
                  remove_stale_temp_files)

log = logging.getLogger("pipeline.build_folds")  # not __name__: run with -m it is __main__

FOLDS_NAME = "folds.json"
SCHEMES = ("disfa3", "kfold")
ZERO_POSITIVE_NOTE = ("an AU with no positive training frame gets r_i = 1/N (as if it had one "
                      "positive), which gives it the largest weight instead of an infinite one")


class FoldError(CommandError, ValueError):
    """The shards cannot make the requested folds (missing subjects, mixed settings)."""


@dataclass
class FoldConfig:
    """How ``build_folds`` was asked to split; stored in ``folds.json``."""

    scheme: str = "disfa3"
    k: int = 3  # kfold only
    seed: int = 0  # kfold only
    val_subjects: int = 1  # kfold only: validation subjects per fold
    camera: str = "left"  # which shards (SN0xx_<camera>.h5) to use
    allow_missing: bool = False

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {SCHEMES}, got {self.scheme!r}")
        if self.scheme == "kfold" and self.k < 2:
            raise ValueError(f"--k must be at least 2, got {self.k}")
        if self.val_subjects < 0:
            raise ValueError(f"--val-subjects must be >= 0, got {self.val_subjects}")


@dataclass
class SubjectStats:
    subject: str
    frames: int
    positives: np.ndarray  # [K] positive frames per AU
    path: str


def peer_au_weights(positives: np.ndarray, n_frames: int) -> tuple[np.ndarray, list[int]]:
    """JAA-Net / ARL / ME-GraphAU loss weights: ``r_i = pos_i / N``, ``w_i = 1 / r_i``,
    ``w <- w / sum(w) * K``. Returns the weights and the indices of AUs without positives
    (given ``r_i = 1 / N``, see :data:`ZERO_POSITIVE_NOTE`)."""
    positives = np.asarray(positives, dtype=np.float64)
    if n_frames <= 0:
        raise FoldError("no training frames: cannot compute AU weights")
    zero = [int(i) for i in np.flatnonzero(positives <= 0)]
    rate = np.maximum(positives, 1.0) / n_frames
    w = 1.0 / rate
    return w / w.sum() * len(w), zero


def scan_shards(shards_dir: Path, camera: str) -> tuple[dict[str, SubjectStats], dict[str, Any]]:
    """Per-subject frame and positive counts from the shards' metadata, and the settings all
    shards share (an error if they differ)."""
    shards_dir = Path(shards_dir)
    if not shards_dir.is_dir():
        raise FoldError(f"shard folder {shards_dir} does not exist")
    stats: dict[str, SubjectStats] = {}
    common: dict[str, Any] | None = None
    first_path = None
    for path in sorted(shards_dir.glob(f"*_{camera}.h5")):
        try:
            reader = ShardReader(path)
        except ShardError as err:
            raise FoldError(str(err)) from err  # the message names the shard
        with reader:
            settings = {"au_ids": [int(a) for a in reader.au_ids],
                        "threshold": int(reader.attrs["threshold"]),
                        "image_size": int(reader.image_size)}
            if common is None:
                common, first_path = settings, path
            elif settings != common:
                diff = {k: (common[k], settings[k]) for k in common if common[k] != settings[k]}
                raise FoldError(
                    f"{path.name} was made with different settings from {first_path.name}: "
                    + ", ".join(f"{k} {b} vs {a}" for k, (a, b) in diff.items())
                    + "; re-run pipeline.align so that all shards agree")
            stats[reader.subject] = SubjectStats(
                subject=reader.subject, frames=len(reader),
                positives=reader.labels.sum(axis=0).astype(np.int64), path=str(path))
    if common is None:
        raise FoldError(f"no {camera}-camera shards (*_{camera}.h5) in {shards_dir}")
    return stats, common


def _assignments(cfg: FoldConfig, subjects: list[str]) -> list[dict[str, list[str]]]:
    """Per fold the subject lists, before checking which shards exist."""
    if cfg.scheme == "disfa3":
        manifest = standard_folds()
        parts = manifest["parts"]
        folds = []
        for k, test in enumerate(parts):
            val = list(manifest["validation_subjects_per_fold"][k])
            train = [s for j, part in enumerate(parts) if j != k for s in part if s not in val]
            folds.append({"train": train, "val": val, "test": list(test)})
        return folds
    if len(subjects) < cfg.k:
        raise FoldError(f"{len(subjects)} subjects cannot make {cfg.k} folds")
    rng = np.random.default_rng(cfg.seed)
    order = [subjects[i] for i in rng.permutation(len(subjects))]
    parts = [list(p) for p in np.array_split(np.asarray(order, dtype=object), cfg.k)]
    folds = []
    for k, test in enumerate(parts):
        rest = [s for j, part in enumerate(parts) if j != k for s in part]
        if cfg.val_subjects >= len(rest):
            raise FoldError(f"fold {k + 1}: {len(rest)} training subjects cannot give "
                            f"{cfg.val_subjects} validation subjects and still train")
        # The first subjects of the lowest-numbered other part (parts are slices of the seeded
        # shuffle): deterministic, but not different per fold: folds whose lowest other part is
        # the same share their validation subjects (k=3: folds 2 and 3 both use part 1's).
        val = rest[: cfg.val_subjects]
        folds.append({"train": rest[cfg.val_subjects:], "val": val, "test": list(test)})
    return folds


def _fold_entry(number: int, roles: dict[str, list[str]], stats: dict[str, Any],
                au_ids: list[int]) -> dict[str, Any]:
    """One fold of the manifest: its subjects, frames, positive rates and the peers' weights."""
    k_aus = len(au_ids)
    frames = {role: int(sum(stats[s].frames for s in subs)) for role, subs in roles.items()}
    positives = {role: (np.sum([stats[s].positives for s in subs], axis=0)
                        if subs else np.zeros(k_aus)) for role, subs in roles.items()}
    pos_rate = {role: [float(p) / frames[role] if frames[role] else 0.0
                       for p in positives[role]] for role in roles}
    weights, zero = peer_au_weights(positives["train"], frames["train"])
    if zero:
        log.warning("fold %d: AU %s have no positive training frame; %s", number,
                    [au_ids[i] for i in zero], ZERO_POSITIVE_NOTE)
    return {
        "fold": number,
        "train": roles["train"], "val": roles["val"], "test": roles["test"],
        "frames": frames,
        "frames_per_subject": {s: stats[s].frames for subs in roles.values() for s in subs},
        "pos_count": {role: [int(p) for p in positives[role]] for role in roles},
        "pos_rate": pos_rate,
        "au_weights": [float(w) for w in weights],
        "zero_positive_aus": [au_ids[i] for i in zero],
        "sampler": {
            "au_weights": [float(w) for w in weights],
            "train_frames_per_subject": {s: stats[s].frames for s in roles["train"]},
            "train_pos_count": [int(p) for p in positives["train"]],
            "note": ("per-AU loss weights w_i (peers' formula on the train subjects: "
                     "r_i = pos_i/N, w_i = 1/r_i, normalised to sum K) for the weighted BCE; "
                     "a frame sampler can weight frame j by sum_i w_i * y_ji; "
                     + ZERO_POSITIVE_NOTE),
        },
    }


def build_folds(shards_dir: Path | str, cfg: FoldConfig | None = None) -> dict[str, Any]:
    """The folds manifest (see module doc); does not write it (``write_folds`` does)."""
    cfg = cfg or FoldConfig()
    shards_dir = Path(shards_dir)
    stats, common = scan_shards(shards_dir, cfg.camera)
    folds_subjects = _assignments(cfg, sorted(stats))
    wanted = sorted({s for f in folds_subjects for role in f.values() for s in role})
    missing = [s for s in wanted if s not in stats]
    if missing and not cfg.allow_missing:
        raise FoldError(f"subjects {missing} of the {cfg.scheme} folds have no {cfg.camera}-"
                        f"camera shard in {shards_dir}; align them, or pass --allow-missing to "
                        "build smaller folds without them")
    unused = sorted(set(stats) - set(wanted))
    if unused:
        log.warning("shards of %s are in no fold of scheme %s", unused, cfg.scheme)
    folds = []
    for number, roles in enumerate(folds_subjects, start=1):
        roles = {role: [s for s in subs if s in stats] for role, subs in roles.items()}
        if missing:
            log.warning("fold %d built without the missing subjects %s", number,
                        [s for s in missing if any(s in v for v in folds_subjects[number - 1]
                                                   .values())])
        if not roles["train"] or not roles["test"]:
            raise FoldError(f"fold {number}: no training or no test subjects left")
        folds.append(_fold_entry(number, roles, stats, common["au_ids"]))
    return {
        "scheme": cfg.scheme,
        "au_ids": common["au_ids"],
        "threshold": common["threshold"],
        "image_size": common["image_size"],
        "camera": cfg.camera,
        "shards_dir": str(shards_dir),
        "missing_subjects": missing,
        "config": dataclasses.asdict(cfg),
        "folds": folds,
    }


def write_folds(manifest: dict[str, Any], out_dir: Path | str) -> Path:
    """Write ``OUT/folds.json`` atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / FOLDS_NAME
    return atomic_write_text(path, json.dumps(manifest, indent=2))


def load_folds(path: Path | str) -> dict[str, Any]:
    """Read a ``folds.json`` (a folder holding one is accepted too) and check its shape."""
    path = Path(path)
    if path.is_dir():
        path = path / FOLDS_NAME
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise FoldError(f"{path}: no folds manifest (run python -m pipeline.build_folds)") from None
    except ValueError as err:
        raise FoldError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(manifest, dict):
        raise FoldError(f"{path}: not a folds manifest (a JSON object)")
    for key in ("scheme", "au_ids", "threshold", "image_size", "folds"):
        if key not in manifest:
            raise FoldError(f"{path}: key {key!r} missing; not a folds manifest")
    if not isinstance(manifest["folds"], list):
        raise FoldError(f"{path}: 'folds' is not a list")
    for fold in manifest["folds"]:
        if not isinstance(fold, dict):
            raise FoldError(f"{path}: a fold is {type(fold).__name__}, not an object")
        for key in ("fold", "train", "val", "test", "au_weights"):
            if key not in fold:
                raise FoldError(f"{path}: fold {fold.get('fold', '?')} lacks {key!r}")
        _check_fold_subjects(fold, path)
    return manifest


def _check_fold_subjects(fold: dict[str, Any], path: Path) -> None:
    """Every subject a fold names is a subject name: shard paths are built from them, so
    ``../elsewhere/SN003`` must not reach a file outside the shards folder."""
    number = fold.get("fold", "?")
    for key in ("train", "val", "test", "frames_per_subject"):
        names = fold.get(key) or []
        if not isinstance(names, (list, dict)):
            raise FoldError(f"{path}: fold {number}: {key!r} is not a list of subjects")
        bad = [s for s in names if not is_known_subject(s)]
        if bad:
            raise FoldError(f"{path}: fold {number}: {key} names {bad[0]!r}, which is not a "
                            "subject name of DISFA, DISFA+ or BP4D")


def format_folds(manifest: dict[str, Any]) -> str:
    au_ids = manifest["au_ids"]
    lines = [f"scheme {manifest['scheme']}, AUs {au_ids}, threshold {manifest['threshold']}, "
             f"image size {manifest['image_size']}"]
    for fold in manifest["folds"]:
        lines.append(f"\nfold {fold['fold']}: train {len(fold['train'])} subjects "
                     f"{fold['frames']['train']} frames | val {fold['val']} "
                     f"{fold['frames']['val']} frames | test {len(fold['test'])} subjects "
                     f"{fold['frames']['test']} frames")
        lines.append("        " + "".join(f"{'AU' + str(a):>8}" for a in au_ids))
        for role in ("train", "val", "test"):
            rates = "".join(f"{100 * r:8.1f}" for r in fold["pos_rate"][role])
            lines.append(f"  {role:>5}%" + rates)
        lines.append("  weight" + "".join(f"{w:8.3f}" for w in fold["au_weights"]))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(formatter_class=HelpFormatter, prog="python -m pipeline.build_folds",
        description="Subject-independent folds with validation hold-outs and per-AU loss "
                    "weights, from pipeline.align shards; writes OUT/folds.json.")
    p.add_argument("--shards", required=True, type=Path, help="folder of SN0xx_<camera>.h5 shards")
    p.add_argument("--out", required=True, type=Path, help="folder for folds.json")
    p.add_argument("--scheme", choices=SCHEMES, default="disfa3",
                   help="disfa3: the standard three DISFA parts (fold k tests part k); "
                        "kfold: seeded subject-independent k folds of the shards found "
                        "(default: disfa3)")
    p.add_argument("--k", type=int_range(2), default=3, help="kfold: number of folds (default: 3)")
    p.add_argument("--seed", type=int, default=0, help="kfold: shuffling seed (default: 0)")
    p.add_argument("--val-subjects", type=int, default=1,
                   help="kfold: validation subjects held out of each fold's training subjects "
                        "(default: 1); disfa3 uses the manifest's rule (the first-listed subject "
                        "of each training part)")
    p.add_argument("--camera", choices=("left", "right"), default="left",
                   help="which camera's shards (default: left)")
    p.add_argument("--allow-missing", action="store_true",
                   help="build the folds without subjects that have no shard (warned) instead "
                        "of failing")
    p.add_argument("--log-level", default="WARNING", help="logging level (default: WARNING)")
    return p


@handle_errors("pipeline.build_folds")
def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = FoldConfig(scheme=args.scheme, k=args.k, seed=args.seed,
                         val_subjects=args.val_subjects, camera=args.camera,
                         allow_missing=args.allow_missing)
    except ValueError as err:
        parser.error(str(err))
    remove_stale_temp_files(check_out_dir(args.out))
    try:
        manifest = build_folds(args.shards, cfg)
    except FoldError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    path = write_folds(manifest, args.out)
    print(format_folds(manifest))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
