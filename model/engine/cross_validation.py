"""Cross-validation: train and test every (variant, fold), and the paper's Tables 1 and 2."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Sequence

from ..evaluation.intensity import intensity_report
from ..evaluation.paper_tables import PAPER_PROTOCOL, TABLE2_ORDER
from ..evaluation.intensity import INTENSITY_UNITS
from ..evaluation.records import (column_name, markdown_table, prose_lines, write_csv,
                                  write_json)
from ..nets.tranet import VARIANTS
from ..evaluation.statistics import DEFAULT_RESAMPLES
from ..evaluation.tasks import common_task, reports_intensity, reports_occurrence, task_record
from .camera_eval import check_camera_options, describe, test_on_camera
from .checkpoint import CheckpointError, load_checkpoint
from .config import TrainConfig, recipe_differences
from .options import config_from_args
from .data import DataError, fold_numbers, fold_spec, training_subjects
from .distributed import DistInfo
from .evaluator import mean_over_folds
from .run_folder import TRAIN_RUN_FILES, RunFolder
from .fold_data import load_data
from .resume import RESUME_OVERRIDABLE
from .trainer import train
from .validation import check_task_options
from .crossval_reports import table1_rows, table2_rows
from . import crossval_reports as reports

log = logging.getLogger("model.crossval")


def run_fold(cfg: TrainConfig, fresh: bool = False) -> dict[str, Any]:
    """Train one (variant, fold), reusing a finished run or resuming an interrupted one made with
    the same settings on the same fold subjects; ``fresh`` replaces the run (built beside, swapped
    in once started; only a folder a tool of ours made). A run made with other settings or on
    other subjects is refused (ValueError naming them), never silently reused."""
    run_dir = Path(cfg.out)
    with fold_folder(run_dir, fresh) as folder:  # one writer per run folder
        if fresh:
            return train(cfg, stage=folder)
        check_same_recipe(cfg, run_dir)
        results = run_dir / "results.json"
        if results.is_file():
            summary = json.loads(results.read_text())
            if summary.get("status") == "finished" and ("test" in summary
                                                        or "test_intensity" in summary):
                log.info("%s: finished earlier with the same settings, reusing its results",
                         run_dir)
                return summary
        if (run_dir / "last.pt").is_file():
            log.info("%s: resuming", run_dir)
            cfg = TrainConfig(**{**cfg.__dict__, "resume": str(run_dir)})
            # The run's stored settings win, except those that may change on resume (which the
            # caller's config then sets: epochs, device, threads, the frame cache ...).
            return train(cfg, explicit=set(RESUME_OVERRIDABLE) - {"out", "shards", "manifest",
                                                                  "compile"}, stage=folder)
        return train(cfg, stage=folder)


def fold_folder(run_dir: Path, fresh: bool = False) -> RunFolder:
    """The folder of one (variant, fold) run: any of our tools' runs may be replaced."""
    return RunFolder(run_dir, "model.crossval", fresh=fresh, option="run folder",
                     tools=("model.train", "model.demo"), legacy_files=TRAIN_RUN_FILES)


def check_same_recipe(cfg: TrainConfig, run_dir: Path) -> None:
    """Refuse to reuse ``run_dir`` when the run recorded there was made with other settings, or
    on other subjects than the manifest's fold names now (a manifest rebuilt at the same path)."""
    recorded = recorded_train_config(run_dir)
    if recorded is None:
        return
    differing = recipe_differences(cfg, recorded) + fold_differences(cfg, run_dir)
    if differing:
        raise ValueError(f"{run_dir} holds a run made with other settings: {'; '.join(differing)}. "
                         "Rerun with --fresh to redo it (its folder is replaced), or choose "
                         "another --out")


def fold_differences(cfg: TrainConfig, run_dir: Path) -> list[str]:
    """What the manifest's fold says now (subjects per split, AUs) that differs from what the run
    in ``run_dir`` recorded it was trained and tested on."""
    recorded = recorded_data(run_dir)
    if not recorded:
        return []
    spec = training_subjects(fold_spec(cfg.manifest, cfg.fold), cfg.select_on)
    now = {"subjects": spec.subjects, "au_ids": list(spec.au_ids)}
    out = []
    for key, value in now.items():
        theirs = recorded.get(key)
        if key == "subjects" and isinstance(theirs, dict):
            value = {k: v for k, v in value.items() if v or theirs.get(k)}
            theirs = {k: v for k, v in theirs.items() if v or value.get(k)}
        if theirs is not None and theirs != value:
            out.append(f"the manifest {cfg.manifest} fold {cfg.fold} now has {key} {value} "
                       f"(run has {theirs})")
    return out


def recorded_data(run_dir: Path) -> dict[str, Any] | None:
    """The ``data`` record (fold subjects, AUs) of the run in ``run_dir``."""
    config = run_dir / "config.json"
    try:
        if config.is_file():
            return json.loads(config.read_text()).get("data")
        if (run_dir / "last.pt").is_file():
            return load_checkpoint(run_dir / "last.pt").get("data")
    except (OSError, ValueError, AttributeError):
        return None
    return None


def recorded_train_config(run_dir: Path) -> dict[str, Any] | None:
    """The train_config of the run in ``run_dir`` (config.json, else last.pt), None if none."""
    config = run_dir / "config.json"
    if config.is_file():
        try:
            return json.loads(config.read_text())["train_config"]
        except (OSError, ValueError, KeyError) as err:
            raise CheckpointError(f"{config}: unreadable run record ({err}); rerun with "
                                  "--fresh") from err
    if (run_dir / "last.pt").is_file():
        return load_checkpoint(run_dir / "last.pt").get("train_config", {})
    return None


def table1(results: Sequence[dict[str, Any]], protocol: str, *, lines: Sequence[str] | None = None,
           resamples: int = DEFAULT_RESAMPLES, seed: int = 0
           ) -> tuple[list[str], list[list[Any]], str]:
    """Ours (mean of folds, with subject-bootstrap intervals) beside the paper's TRA column."""
    header, rows, s = table1_rows(results, resamples, seed)
    lines = list(lines) if lines is not None else [f"Ours: {protocol}", f"Paper: {PAPER_PROTOCOL}"]
    folds = [r["fold"] for r in results]
    text = (f"# Table 1: TRA-Net, F1-frame and accuracy (%) on the test subjects, mean of folds "
            f"{folds}\n\n" + "\n\n".join(lines) + "\n\n" + markdown_table(header, rows) + "\n")
    return header, rows, text


def table2(per_variant: dict[str, list[dict[str, Any]]], protocol: str, *,
           lines: Sequence[str] | None = None, resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
           mismatched: Sequence[str] | set[str] = ()) -> tuple[list[str], list[list[Any]], str]:
    """F1 per AU of each variant (ours, mean of folds, [CI], paired difference to TRA-Net) and
    the paper's row below it; ``mismatched`` variants' differences are labelled."""
    header, rows, _ = table2_rows(per_variant, resamples, seed, mismatched)
    lines = list(lines) if lines is not None else [f"Ours: {protocol}", f"Paper: {PAPER_PROTOCOL}"]
    text = ("# Table 2: F1-frame (%) of the TRA-Net variants, mean of folds\n\n"
            + "\n\n".join(lines) + "\n\n" + markdown_table(header, rows) + "\n")
    return header, rows, text


def write_intensity_table(out: Path, variant: str, results: Sequence[dict[str, Any]],
                          protocol: str, resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                          notes: Sequence[str] = ()) -> str:
    """``OUT/intensity[_<variant>].{csv,md}`` beside table1: ICC(3,1) / r / MAE per fold and mean.
    ``notes``: further header lines (the task line)."""
    first = results[0]
    au_ids = first.get("au_ids") or first["test"]["au_ids"]  # older runs: the occurrence AUs
    header, rows, text = intensity_report(
        [(r["fold"], r["test_intensity"]) for r in results], au_ids,
        f"Intensity (0-5) of {variant} on the test subjects", protocol, resamples, seed, notes)
    stem = "intensity" if variant == "tranet" else f"intensity_{variant}"
    write_csv(out / f"{stem}.csv", header, rows, notes=prose_lines(text), units=INTENSITY_UNITS)
    (out / f"{stem}.md").write_text(text)
    return text


def crossval(args: argparse.Namespace, explicit: set[str] | None = None) -> dict[str, Any]:
    """Train and test every (variant, fold), then write the tables (see model.crossval).
    ``explicit``: the options the command line gave (a ``--recipe`` fills the others)."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    resamples = int(getattr(args, "bootstrap", DEFAULT_RESAMPLES))
    seed = int(getattr(args, "bootstrap_seed", 0))
    compare = list(getattr(args, "compare", None) or [])
    allow = bool(getattr(args, "allow_protocol_mismatch", False))
    if compare and not any(c in VARIANTS for c in compare):
        return write_comparison(out, compare, {}, resamples, seed, allow)   # run folders only
    if not args.shards or not args.manifest:
        raise ValueError("--shards and --manifest are needed (all but --compare FOLDER FOLDER)")
    folds = args.folds or fold_numbers(args.manifest)
    variants = list(args.variants or (list(TABLE2_ORDER) if args.ablations else ["tranet"]))
    variants += [c for c in compare if c in VARIANTS and c not in variants]
    base = config_from_args(args, explicit, fold=folds[0], out=str(out), variant=variants[0])
    test_camera = getattr(args, "test_camera", None)
    check_camera_options(test_camera, getattr(args, "camera_shards", None))
    check_task_options(base.task, {"test_camera": test_camera})
    if test_camera and test_camera in base.cameras:
        raise ValueError(f"--test-camera {test_camera}: the models also train on that camera "
                         f"(--cameras {' '.join(base.cameras)}); train on the other one")
    # Every fold's data is checked before any training starts.
    for fold in folds:
        load_data(TrainConfig(**{**base.__dict__, "fold": fold, "workers": 0}), DistInfo(),
                  _cpu())
    per_variant, failures = train_all(base, out, variants, folds, getattr(args, "fresh", False))
    if failures and failures[-1].get("error") == "interrupted":
        return {"status": "interrupted", "failures": failures}
    if test_camera:
        failures += test_on_camera(per_variant, base, test_camera,
                                   getattr(args, "camera_frames", "matched"),
                                   getattr(args, "camera_shards", None))
    report = write_reports(out, per_variant, failures, base, args, resamples, seed)
    if compare:
        report["comparison"] = write_comparison(out, compare, per_variant, resamples, seed, allow)
        report["texts"].append(report["comparison"].pop("text"))
    return report


def train_all(base: TrainConfig, out: Path, variants: Sequence[str], folds: Sequence[int],
              fresh: bool = False) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """Every (variant, fold); a failed fold is recorded and the others still run. Without
    ``fresh``, a run folder recorded with other settings stops everything before any training."""
    configs = {(variant, fold): TrainConfig(**{**base.__dict__, "variant": variant, "fold": fold,
                                               "out": str(out / variant / f"fold{fold}")})
               for variant in variants for fold in folds}
    for cfg in configs.values():  # refuse before anything trains or any table is rewritten
        if fresh:
            fold_folder(Path(cfg.out), fresh).check()
        else:
            check_same_recipe(cfg, Path(cfg.out))
    per_variant: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    failures: list[dict[str, Any]] = []
    for k, (variant, fold) in enumerate(configs, start=1):
        cfg = configs[(variant, fold)]
        log.info("run %d of %d: %s fold %d -> %s", k, len(configs), variant, fold, cfg.out)
        try:
            summary = run_fold(cfg, fresh=fresh)
        except (DataError, CheckpointError, ValueError, FloatingPointError) as err:
            log.error("%s fold %d failed: %s", variant, fold, err)
            failures.append({"variant": variant, "fold": fold, "error": str(err)})
            continue
        if summary.get("status") != "finished":
            log.warning("%s fold %d stopped before finishing; rerun to resume", variant, fold)
            failures.append({"variant": variant, "fold": fold, "error": "interrupted"})
            return per_variant, failures
        per_variant[variant].append(summary)
    return per_variant, failures


def write_reports(out: Path, per_variant: dict[str, list[dict[str, Any]]],
                  failures: list[dict[str, Any]], base: TrainConfig, args: argparse.Namespace,
                  resamples: int, seed: int) -> dict[str, Any]:
    """table1, table2, the camera tables, per-subject results and crossval.json."""
    done = {v: rs for v, rs in per_variant.items() if rs}
    protocols = sorted({r["protocol"] for rs in done.values() for r in rs})
    protocol = " / ".join(protocols) if protocols else f"label threshold {base.threshold}"
    report: dict[str, Any] = {"status": "finished", "folds": sorted({r["fold"] for rs in
                                                                      done.values() for r in rs}),
                              "variants": list(per_variant), "protocol": protocol,
                              "paper_protocol": PAPER_PROTOCOL, "failures": failures,
                              "bootstrap": {"resamples": resamples, "seed": seed},
                              "results": {v: rs for v, rs in per_variant.items()}}
    task = common_task([r for rs in done.values() for r in rs]) if done else base.task
    report.update(task_record(task))
    texts = []
    # Table 2 pairs every variant with TRA-Net: refused before any table is written if they
    # were not scored the same way.
    mismatch_lines, mismatched = reports.table2_protocol(
        done, bool(getattr(args, "allow_protocol_mismatch", False)))
    lines = reports.header_lines(done, protocol, base.manifest, resamples, seed)
    if reports_occurrence(task):
        texts += occurrence_tables(out, done, protocol, lines, args, resamples, seed, report,
                                   (mismatch_lines, mismatched))
    for variant, rs in done.items():
        mine = [n for n in lines if not n.startswith("Recipe (") or
                n.startswith(f"Recipe ({variant})")]
        if reports_occurrence(task):
            texts += variant_reports(out, variant, rs, mine, resamples, seed, report)
        if reports_intensity(task) and all("test_intensity" in r for r in rs):
            texts.append(write_intensity_table(out, variant, rs, protocol, resamples, seed,
                                               notes=[n for n in mine if n.startswith("Task")]))
    write_json(out / "crossval.json", report)
    report["texts"] = texts
    return report


def occurrence_tables(out: Path, done: dict[str, list[dict[str, Any]]], protocol: str,
                      lines: list[str], args: argparse.Namespace, resamples: int, seed: int,
                      report: dict[str, Any], mismatch: tuple[list[str], set[str]]) -> list[str]:
    """Table 1 (TRA-Net beside the paper) and Table 2 (the variants), runs with a trained
    occurrence head only; ``mismatch``: Table 2's protocol notes and the variants allowed to
    differ from TRA-Net (``reports.table2_protocol``)."""
    mismatch_lines, mismatched = mismatch
    texts = []
    if done.get("tranet"):
        tranet_lines = [n for n in lines if not n.startswith("Recipe (") or
                        n.startswith("Recipe (tranet)")]
        header, rows, text = table1(done["tranet"], protocol, lines=tranet_lines,
                                    resamples=resamples, seed=seed)
        write_csv(out / "table1.csv", header, rows, notes=tranet_lines,
                  units=reports.PERCENT_UNITS)
        (out / "table1.md").write_text(text)
        report["table1"] = {"header": header, "rows": rows, "notes": tranet_lines}
        texts.append(text)
    if done and (args.ablations or len(done) > 1):
        t2_lines = lines + mismatch_lines + reports.table2_test_lines(done, resamples, seed)
        header, rows, text = table2(done, protocol, lines=t2_lines, resamples=resamples, seed=seed,
                                    mismatched=mismatched)
        write_csv(out / "table2.csv", header, rows, notes=t2_lines, units=reports.PERCENT_UNITS,
                  columns=[*map(column_name, header[:-1]), "difference_to_tranet"])
        (out / "table2.md").write_text(text)
        report["table2"] = {"header": header, "rows": rows, "notes": t2_lines,
                            "protocol_mismatch": sorted(mismatched),
                            "differences_to_tranet": table2_rows(done, resamples, seed)[2]}
        texts.append(text)
    return texts


def variant_reports(out: Path, variant: str, rs: list[dict[str, Any]], mine: list[str],
                    resamples: int, seed: int, report: dict[str, Any]) -> list[str]:
    """One variant's occurrence results: mean over folds, per-subject F1, the camera table."""
    report.setdefault("mean_over_folds", {})[variant] = mean_over_folds(
        [{"fold": r["fold"], "metrics": r["test"]} for r in rs])
    report.setdefault("per_subject", {})[variant] = entries = reports.per_subject(rs)
    reports.write_heatmap(entries, rs[0]["test"]["au_ids"], out / f"per_subject_{variant}.png",
                          f"{variant}: F1 (%) per held-out subject", mine)
    if any("test_camera" in r for r in rs):
        return [camera_table(out, variant, rs, mine, resamples, seed, report)]
    return []


def camera_table(out: Path, variant: str, results: list[dict[str, Any]], lines: list[str],
                 resamples: int, seed: int, report: dict[str, Any]) -> str:
    """Left (trained-on) and the other camera side by side, with the paired difference, on the
    frames and landmarks the notes name (``model.engine.camera_eval``)."""
    tested = [r for r in results if "test_camera" in r]
    camera = tested[0]["test_camera"]["camera"]
    comparisons = [r["test_camera"]["comparison"] for r in tested]
    frames = comparisons[0]["frames"]
    header, rows, detail = reports.compare_rows(
        camera, [tested], "left", [tested], resamples, seed, key_a="test_camera",
        key_b="test_camera_left" if all("test_camera_left" in r for r in tested) else "test")
    detail["comparison"] = {"frames": frames, "landmarks": comparisons[0]["landmarks"],
                            "per_fold": {r["fold"]: c for r, c in zip(tested, comparisons)}}
    report.setdefault("cameras", {})[variant] = detail
    entries = reports.per_subject(tested, "test_camera")
    report.setdefault("per_subject_camera", {})[variant] = entries
    reports.write_heatmap(entries, tested[0]["test"]["au_ids"],
                          out / f"per_subject_{variant}_{camera}.png",
                          f"{variant}, {camera} camera: F1 (%) per held-out subject", lines)
    which = ("the same frames" if frames == "matched"
             else "every frame each camera kept (frame sets differ)")
    title = (f"Cross-camera ({variant}): trained on the left camera, the same held-out subjects "
             f"tested on the left and the {camera} camera, {which}, mean of folds "
             f"{detail['folds']}")
    lines = ([n for n in lines if not n.startswith(("Paper", "Comparison"))]
             + describe(comparisons, camera) + detail["difference"]["method"])
    return reports.write_table(out, f"cameras_{variant}", title, lines, header, rows,
                               columns=reports.COMPARE_COLUMNS)


def comparison_side(name: str, per_variant: dict[str, list[dict[str, Any]]]
                    ) -> tuple[str, list[list[dict[str, Any]]]]:
    """(label, runs) of one ``--compare`` side: a variant of this run, or one or more
    model.crossval output folders joined by commas (runs of one recipe, e.g. training seeds)."""
    if name in VARIANTS:
        if not per_variant.get(name):
            raise DataError(f"--compare {name}: no finished fold of that variant")
        return name, [per_variant[name]]
    runs, labels = [], []
    for folder in [f for f in name.split(",") if f]:
        variant, results = reports.load_run_folder(folder)
        runs.append(results)
        labels.append(f"{Path(folder).name}:{variant}")
    if not runs:
        raise DataError(f"--compare {name!r}: names no run folder")
    return (labels[0] if len(labels) == 1 else "+".join(labels)), runs


def write_comparison(out: Path, names: Sequence[str], per_variant: dict[str, list[dict[str, Any]]],
                     resamples: int, seed: int, allow_mismatch: bool = False) -> dict[str, Any]:
    """``--compare A B``: each a variant of this run or model.crossval output folder(s)."""
    if len(names) != 2:
        raise ValueError("--compare takes two names: variants of this run or run folders")
    (na, ra), (nb, rb) = (comparison_side(name, per_variant) for name in names)
    flat_a, flat_b = [r for run in ra for r in run], [r for run in rb for r in run]
    checks, mismatch = reports.comparability_lines(na, flat_a, nb, flat_b, allow_mismatch,
                                                   context="--compare")
    for name, flat in ((na, flat_a), (nb, flat_b)):
        if not any("test" in r for r in flat):  # an intensity run: no occurrence head to pair
            raise ValueError(f"--compare pairs occurrence F1, and {name} has no trained "
                             f"occurrence head (task {common_task(flat)}): compare intensity "
                             "runs by their intensity tables (intensity_<variant>.md)")
    header, rows, detail = reports.compare_rows(na, ra, nb, rb, resamples, seed)
    protocols = sorted({r["protocol"] for r in [*flat_a, *flat_b] if r.get("protocol")})
    lines = reports.header_lines({na: flat_a, nb: flat_b}, " / ".join(protocols), None,
                                 resamples, seed, paper=False)
    if len(ra) > 1 and len(rb) > 1:    # the F1 columns are then ranges over runs, not intervals
        lines = [n for n in lines if not n.startswith("[")]
    lines = lines + checks + detail["difference"]["method"]
    title = f"Paired comparison: {na} vs {nb}" + (" (PROTOCOL MISMATCH)" if mismatch else "")
    text = reports.write_table(out, "compare", title, lines, header, rows,
                               columns=reports.COMPARE_COLUMNS)
    payload = {"status": "finished", "a": na, "b": nb, "notes": lines, "header": header,
               "rows": rows, "protocol_mismatch": mismatch, **detail}
    write_json(out / "compare.json", payload)
    return {**payload, "text": text, "texts": [text]}


def _cpu():
    import torch

    return torch.device("cpu")
