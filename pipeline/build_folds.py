"""Subject-independent folds, validation hold-outs and per-AU loss weights from aligned shards.

    python -m pipeline.build_folds --shards shards/ --out folds/            # DISFA's 3 parts
    python -m pipeline.build_folds --shards twin/ --out folds/ --scheme kfold --k 3
    python -m pipeline.build_folds --shards bp4d/ --out folds/ --scheme bp4d3  # BP4D's 3 parts

Any supported dataset's shards (``pipeline.datasets.registry``; all of one dataset, recorded
as the manifest's ``dataset``). Frames "not coded" for an AU count neither as positive nor as
negative for that AU: its rate and weight are over the frames coded for it.

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

from .datasets.base import NOT_CODED
from .datasets.disfa.facts import MANIFEST_DIR, standard_folds
from .datasets.registry import LEGACY_DATASET, dataset_info, is_known_subject
from .shards import ShardError, ShardReader
from .shipped_manifests import complete_shipped_manifest, is_shipped_manifest
from .cli import (HelpFormatter, CommandError, atomic_write_text, check_out_dir, handle_errors, int_range,
                  remove_stale_temp_files)

log = logging.getLogger("pipeline.build_folds")  # not __name__: run with -m it is __main__

FOLDS_NAME = "folds.json"
SCHEMES = ("disfa3", "bp4d3", "kfold")
#: The standard-parts schemes: dataset and its folds manifest in ``data_manifests/``.
STANDARD_SCHEMES = {"disfa3": ("disfa", "disfa_folds.json"), "bp4d3": ("bp4d", "bp4d_folds.json")}
#: Cameras a shard name may end in (DISFA's two; image-folder datasets' one).
CAMERAS = ("left", "right", "frontal")
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
    coded: np.ndarray | None = None  # [K] frames coded for each AU (None: all of them)

    def coded_frames(self) -> np.ndarray:
        return (np.full(len(self.positives), self.frames, dtype=np.int64)
                if self.coded is None else self.coded)


def peer_au_weights(positives: np.ndarray, n_frames: int) -> tuple[np.ndarray, list[int]]:
    """JAA-Net / ARL / ME-GraphAU loss weights: ``r_i = pos_i / N``, ``w_i = 1 / r_i``,
    ``w <- w / sum(w) * K``. Returns the weights and the indices of AUs without positives
    (given ``r_i = 1 / N``, see :data:`ZERO_POSITIVE_NOTE`). ``n_frames`` may be per AU: the
    frames coded for it (BP4D's "not coded" frames are left out of its rate)."""
    positives = np.asarray(positives, dtype=np.float64)
    n = np.broadcast_to(np.asarray(n_frames, dtype=np.float64), positives.shape)
    if np.asarray(n_frames).max(initial=0) <= 0:
        raise FoldError("no training frames: cannot compute AU weights")
    zero = [int(i) for i in np.flatnonzero(positives <= 0)]
    rate = np.maximum(positives, 1.0) / np.maximum(n, 1.0)
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
            settings = {"dataset": reader.dataset, "au_ids": [int(a) for a in reader.au_ids],
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
            stats[reader.subject] = _subject_stats(reader, path)
    if common is None:
        raise FoldError(f"no {camera}-camera shards (*_{camera}.h5) in {shards_dir}")
    return stats, common


def _subject_stats(reader: ShardReader, path: Path) -> SubjectStats:
    """Frames, positives and coded frames per AU (NOT_CODED counts as neither)."""
    labels = np.asarray(reader.labels)
    coded = (labels != NOT_CODED).sum(axis=0).astype(np.int64)
    return SubjectStats(subject=reader.subject, frames=len(reader),
                        positives=(labels == 1).sum(axis=0).astype(np.int64), path=str(path),
                        coded=None if (coded == len(labels)).all() else coded)


def standard_manifest(scheme: str) -> dict[str, Any]:
    """The standard parts of ``scheme`` (``disfa3``, ``bp4d3``) from ``data_manifests/``."""
    dataset, name = STANDARD_SCHEMES[scheme]
    if dataset == LEGACY_DATASET:
        return standard_folds()
    path = MANIFEST_DIR / name
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise FoldError(f"{path}: cannot read the {scheme} parts ({err})") from err
    if manifest.get("dataset") != dataset or not isinstance(manifest.get("parts"), list):
        raise FoldError(f"{path}: not a {dataset} folds manifest (needs 'dataset' and 'parts')")
    return manifest


def _test_parts(manifest: dict[str, Any]) -> list[int]:
    """Per fold the 0-based index of the part it tests: the manifest's ``folds[k].test_part``
    (1-based; BP4D's fold 1 tests part 3, as ME-GraphAU numbers them), else part k (DISFA)."""
    n = len(manifest["parts"])
    entries = manifest.get("folds")
    if not entries:
        return list(range(n))
    tests = [int(entry["test_part"]) - 1 for entry in entries]
    if sorted(tests) != list(range(n)):
        raise FoldError(f"{_manifest_name(manifest)}: folds test parts {[t + 1 for t in tests]}, "
                        f"not each of the {n} parts once")
    return tests


def _manifest_name(manifest: dict[str, Any]) -> str:
    return str(manifest.get("name") or manifest.get("dataset") or "the folds manifest")


def _assignments(cfg: FoldConfig, subjects: list[str]) -> list[dict[str, list[str]]]:
    """Per fold the subject lists, before checking which shards exist."""
    if cfg.scheme in STANDARD_SCHEMES:
        manifest = standard_manifest(cfg.scheme)
        parts = manifest["parts"]
        folds = []
        for k, test_index in enumerate(_test_parts(manifest)):
            val = list(manifest["validation_subjects_per_fold"][k])
            train = [s for j, part in enumerate(parts) if j != test_index for s in part
                     if s not in val]
            folds.append({"train": train, "val": val, "test": list(parts[test_index])})
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
    coded = {role: (np.sum([stats[s].coded_frames() for s in subs], axis=0)
                    if subs else np.zeros(k_aus, dtype=np.int64)) for role, subs in roles.items()}
    pos_rate = {role: [float(p) / c if c else 0.0 for p, c in zip(positives[role], coded[role])]
                for role in roles}
    if frames["train"] <= 0:
        raise FoldError("no training frames: cannot compute AU weights")
    weights, zero = peer_au_weights(positives["train"], coded["train"])
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
    wants = STANDARD_SCHEMES.get(cfg.scheme, (common["dataset"],))[0]
    if wants != common["dataset"]:
        raise FoldError(f"--scheme {cfg.scheme} is {dataset_info(wants).title}'s split; the "
                        f"shards in {shards_dir} are {dataset_info(common['dataset']).title}'s")
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
        "dataset": common["dataset"],
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
    if is_shipped_manifest(manifest):  # data_manifests/'s protocol manifests, as shipped
        try:
            manifest = complete_shipped_manifest(manifest)
        except ValueError as err:  # an unknown dataset
            raise FoldError(f"{path}: {err}") from None
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
    ``../elsewhere/SN003`` must not reach a file outside the shards folder. Names of any
    supported dataset (the manifest's ``dataset`` says which; older manifests are DISFA's)."""
    number = fold.get("fold", "?")
    for key in ("train", "val", "test", "frames_per_subject"):
        names = fold.get(key) or []
        if not isinstance(names, (list, dict)):
            raise FoldError(f"{path}: fold {number}: {key!r} is not a list of subjects")
        bad = [s for s in names if not is_known_subject(s)]
        if bad:
            raise FoldError(f"{path}: fold {number}: {key} names {bad[0]!r}, which is not a "
                            "subject name of a supported dataset (SN001, F001, ...)")


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
    p.add_argument("--shards", required=True, type=Path,
                   help="folder of <subject>_<camera>.h5 shards (one dataset)")
    p.add_argument("--out", required=True, type=Path, help="folder for folds.json")
    p.add_argument("--scheme", choices=SCHEMES, default="disfa3",
                   help="disfa3 / bp4d3: the dataset's standard three parts "
                        "(data_manifests/<dataset>_folds.json; disfa3: fold k tests part k; "
                        "bp4d3: the manifest's mapping, fold 1 tests part 3 as ME-GraphAU "
                        "numbers them); kfold: seeded subject-independent k folds of the shards "
                        "found (default: disfa3)")
    p.add_argument("--k", type=int_range(2), default=3, help="kfold: number of folds (default: 3)")
    p.add_argument("--seed", type=int, default=0, help="kfold: shuffling seed (default: 0)")
    p.add_argument("--val-subjects", type=int, default=1,
                   help="kfold: validation subjects held out of each fold's training subjects "
                        "(default: 1); disfa3 uses the manifest's rule (the first-listed subject "
                        "of each training part)")
    p.add_argument("--camera", choices=CAMERAS,
                   help="which camera's shards: DISFA left or right, frontal for BP4D and "
                        "DISFA+ (default: left, or frontal where the folder has no left-camera "
                        "shard)")
    p.add_argument("--allow-missing", action="store_true",
                   help="build the folds without subjects that have no shard (warned) instead "
                        "of failing")
    p.add_argument("--log-level", default="WARNING", help="logging level (default: WARNING)")
    return p


def default_camera(shards_dir: Path) -> str:
    """``left`` (DISFA's default), or ``frontal`` where the folder holds only frontal shards."""
    folder = Path(shards_dir)
    if folder.is_dir() and not any(folder.glob("*_left.h5")) and any(folder.glob("*_frontal.h5")):
        return "frontal"
    return "left"


@handle_errors("pipeline.build_folds")
def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = FoldConfig(scheme=args.scheme, k=args.k, seed=args.seed,
                         val_subjects=args.val_subjects,
                         camera=args.camera or default_camera(args.shards),
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
