"""AU intensity metrics as intensity papers report them on DISFA: ICC(3,1), Pearson r and MAE.

Per AU, over every evaluated frame of every held-out subject (pooled, like the F1 of
``model.evaluation.metrics``), with predictions clipped to FACS's 0-5 range:

* ICC(3,1) (Shrout & Fleiss: two-way mixed, consistency, single rater) with the model and the
  human coder as the two "raters" of each frame. For two raters it reduces to
  ``2 cov(x, y) / (var(x) + var(y))`` (sample (co)variances), equal to pingouin's ``ICC3``;
* Pearson's r, equal to ``scipy.stats.pearsonr``;
* MAE, the mean absolute difference.

All three need only sums over frames (n, sum x, sum y, sum x^2, sum y^2, sum xy, sum |x - y|),
kept in float64 so DDP ranks can add them; the (co)variances are computed around a fixed shift
(2.5, the middle of the scale) to keep the sums well conditioned.

Undefined values: ICC and r are 0/0 when the predictions or the truth do not vary over the
evaluated frames (e.g. an AU no test subject shows). The tables never show NaN: an undefined ICC
or r is reported as 0.0 (no agreement beyond a constant can be shown) and the AU is listed in
``undefined`` so a reader can tell "0 because undefined" from a measured 0. When only one side is
constant and the other varies, the covariance is 0 and ICC = r = 0 exactly, which is also what
pingouin computes (scipy's pearsonr returns NaN there and warns).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from .cells import MIN_CI_SUBJECTS, Num, degenerate_line
from .statistics import (DEFAULT_LEVEL, DEFAULT_RESAMPLES, check_resamples, fold_rngs,
                         method_line, percentile_interval, subject_weights)

#: FACS intensity range (A..E coded 1..5; 0 = absent).
INTENSITY_MIN, INTENSITY_MAX = 0.0, 5.0
_SHIFT = 2.5
_N_SUMS = 7  # n, sx, sy, sxx, syy, sxy, sabs


def frame_terms(predictions: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray,
                clip: bool = True) -> np.ndarray:
    """Per-frame ``[N, K, 7]`` float64 terms (1, x, y, x², y², xy, |x-y|) whose sums over frames
    are :func:`intensity_sums`; x the (clipped) predictions and y the coded intensities, both
    shifted by 2.5. A NaN target ("not coded") adds nothing, not even to the count."""
    x = torch.as_tensor(predictions).detach().cpu().double()
    y = torch.as_tensor(targets).detach().cpu().double()
    if x.shape != y.shape or x.dim() != 2:
        raise ValueError(f"predictions {tuple(x.shape)} and targets {tuple(y.shape)} must both "
                         "be [N, K]")
    if clip:
        x = x.clamp(INTENSITY_MIN, INTENSITY_MAX)
    x, y = x - _SHIFT, y - _SHIFT
    terms = torch.stack([torch.ones_like(x), x, y, x * x, y * y, x * y, (x - y).abs()], dim=2)
    return torch.where(torch.isnan(y)[..., None], 0.0, terms).numpy()


def intensity_sums(predictions: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray,
                   clip: bool = True) -> np.ndarray:
    """Per-AU ``[K, 7]`` float64 sums (n, Σx, Σy, Σx², Σy², Σxy, Σ|x-y|) of one batch, x the
    (clipped) predictions and y the coded intensities, both shifted by 2.5."""
    return frame_terms(predictions, targets, clip).sum(axis=0)


@dataclass
class IntensityMetrics:
    """Per-AU ICC(3,1), Pearson r and MAE of one evaluation, with their unweighted means."""

    au_ids: list[int]
    icc: list[float]
    pearson: list[float]
    mae: list[float]
    n_frames: int
    undefined: list[int] = field(default_factory=list)  # AUs whose ICC/r are 0/0, reported 0
    mean_over: list[int] = field(default_factory=list)  # the AUs the means are taken over
    #: Per held-out subject: names and ``[S][K][7]`` sums (the bootstrap's resampling unit).
    subjects: list[str] = field(default_factory=list)
    subject_sums: list[list[list[float]]] = field(default_factory=list)

    @property
    def mean_icc(self) -> float:
        return self._mean(self.icc)

    @property
    def mean_pearson(self) -> float:
        return self._mean(self.pearson)

    @property
    def mean_mae(self) -> float:
        return self._mean(self.mae)

    def _mean(self, values: Sequence[float]) -> float:
        chosen = [v for a, v in zip(self.au_ids, values) if a in (self.mean_over or self.au_ids)]
        return float(np.mean(chosen)) if chosen else 0.0

    def subset(self, au_ids: Sequence[int]) -> "IntensityMetrics":
        """The same figures restricted to ``au_ids`` (e.g. the 8 of the occurrence table)."""
        keep = [self.au_ids.index(int(a)) for a in au_ids if int(a) in self.au_ids]
        aus = [self.au_ids[i] for i in keep]
        sums = (np.asarray(self.subject_sums)[:, keep].tolist() if self.subject_sums else [])
        return IntensityMetrics(aus, [self.icc[i] for i in keep], [self.pearson[i] for i in keep],
                                [self.mae[i] for i in keep], self.n_frames,
                                [a for a in self.undefined if a in aus], aus,
                                list(self.subjects), sums)

    def as_dict(self) -> dict:
        out = {"au_ids": self.au_ids, "icc": self.icc, "pearson": self.pearson, "mae": self.mae,
               "mean_icc": self.mean_icc, "mean_pearson": self.mean_pearson,
               "mean_mae": self.mean_mae, "mean_over": self.mean_over or self.au_ids,
               "n_frames": self.n_frames, "undefined": self.undefined,
               "undefined_reported_as": 0.0}
        if self.subjects:
            out["per_subject"] = {"subjects": self.subjects, "sums": self.subject_sums,
                                  "sums_order": "n, Σx, Σy, Σx², Σy², Σxy, Σ|x-y| (x, y - 2.5)"}
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "IntensityMetrics":
        per = d.get("per_subject") or {}
        return cls([int(a) for a in d["au_ids"]], list(d["icc"]), list(d["pearson"]),
                   list(d["mae"]), int(d["n_frames"]), [int(a) for a in d.get("undefined", [])],
                   [int(a) for a in d.get("mean_over", [])], list(per.get("subjects", [])),
                   list(per.get("sums", [])))


def metric_arrays(sums: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """ICC, r, MAE and "defined" per AU from ``[..., K, 7]`` sums (any leading axes, e.g. the
    bootstrap's replicates)."""
    n, sx, sy, sxx, syy, sxy, sabs = np.moveaxis(np.asarray(sums, dtype=np.float64), -1, 0)
    safe_n = np.maximum(n, 1.0)
    # (n - 1) times the sample (co)variances; the common factor cancels in ICC and r.
    vx = np.maximum(sxx - sx * sx / safe_n, 0.0)
    vy = np.maximum(syy - sy * sy / safe_n, 0.0)
    cxy = sxy - sx * sy / safe_n
    # A (co)variance below rounding noise of the sums is a constant series.
    tiny = 1e-12 * np.maximum(np.maximum(sxx, syy), 1.0)
    defined = (vx > tiny) & (vy > tiny) & (n >= 2)
    icc = np.where(defined, 2 * cxy / np.where(defined, vx + vy, 1.0), 0.0)
    r = np.clip(np.where(defined, cxy / np.sqrt(np.where(defined, vx * vy, 1.0)), 0.0), -1, 1)
    mae = np.where(n > 0, sabs / safe_n, 0.0)
    return icc, r, mae, defined


def metrics_from_sums(sums: np.ndarray, au_ids: Sequence[int],
                      mean_over: Sequence[int] | None = None) -> IntensityMetrics:
    """ICC(3,1), r and MAE per AU from :func:`intensity_sums` totals."""
    sums = np.asarray(sums, dtype=np.float64)
    if sums.shape != (len(au_ids), _N_SUMS):
        raise ValueError(f"sums shape {sums.shape} does not fit {len(au_ids)} AUs")
    icc, r, mae, defined = metric_arrays(sums)
    ids = [int(a) for a in au_ids]
    return IntensityMetrics(ids, icc.tolist(), r.tolist(), mae.tolist(),
                            int(sums[0, 0]) if len(sums) else 0,
                            [a for a, ok in zip(ids, defined) if not ok],
                            [int(a) for a in mean_over] if mean_over else [])


def intensity_metrics(predictions, targets, au_ids: Sequence[int],
                      mean_over: Sequence[int] | None = None, clip: bool = True) -> IntensityMetrics:
    """Per-AU metrics of ``[N, K]`` predictions against coded intensities, in one call."""
    return metrics_from_sums(intensity_sums(predictions, targets, clip), au_ids, mean_over)


class IntensityAccumulator:
    """Sums over batches; ``sums_tensor``/``load_sums_tensor`` let DDP ranks all-reduce them.

    With ``subjects`` (names) each ``update`` also gets the subject index of every frame and the
    sums are kept per subject (their total is the pooled sums), for the subject bootstrap.
    """

    def __init__(self, au_ids: Sequence[int], mean_over: Sequence[int] | None = None,
                 subjects: Sequence[str] | None = None) -> None:
        self.au_ids = [int(a) for a in au_ids]
        self.mean_over = list(mean_over) if mean_over else None
        self.subjects = [str(s) for s in subjects] if subjects else []
        self.subject_sums = np.zeros((max(len(self.subjects), 1), len(self.au_ids), _N_SUMS),
                                     dtype=np.float64)

    @property
    def sums(self) -> np.ndarray:
        return self.subject_sums.sum(axis=0)

    def update(self, predictions: torch.Tensor, targets: torch.Tensor,
               groups: np.ndarray | None = None) -> None:
        terms = frame_terms(predictions, targets)
        if groups is None:
            self.subject_sums[0] += terms.sum(axis=0)
            return
        groups = np.asarray(groups, dtype=np.int64)
        if len(groups) != len(terms) or (len(groups) and not
                                         0 <= groups.min() <= groups.max() < len(self.subject_sums)):
            raise ValueError(f"groups must give each of the {len(terms)} frames a subject index "
                             f"below {len(self.subject_sums)} (subjects: {self.subjects})")
        np.add.at(self.subject_sums, groups, terms)

    def sums_tensor(self) -> torch.Tensor:
        return torch.as_tensor(self.subject_sums.reshape(-1), dtype=torch.float64)

    def load_sums_tensor(self, values: torch.Tensor) -> None:
        self.subject_sums = values.cpu().double().numpy().reshape(self.subject_sums.shape)

    def compute(self) -> IntensityMetrics:
        metrics = metrics_from_sums(self.sums, self.au_ids, self.mean_over)
        if self.subjects:
            metrics.subjects = list(self.subjects)
            metrics.subject_sums = self.subject_sums.tolist()
        return metrics


def mean_intensity_over_folds(per_fold: Sequence[dict]) -> dict:
    """Unweighted mean over folds of each AU's ICC, r and MAE (the papers' convention)."""
    folds = [IntensityMetrics.from_dict(d) for d in per_fold]
    first = folds[0]
    mean = IntensityMetrics(first.au_ids, np.mean([f.icc for f in folds], 0).tolist(),
                            np.mean([f.pearson for f in folds], 0).tolist(),
                            np.mean([f.mae for f in folds], 0).tolist(),
                            sum(f.n_frames for f in folds),
                            sorted({a for f in folds for a in f.undefined}), first.mean_over)
    return mean.as_dict()


def bootstrap_intensity(fold_sums: Sequence[np.ndarray], resamples: int = DEFAULT_RESAMPLES,
                        seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``[B, K]`` replicates of ICC, r and MAE, each the mean over folds of the metric of the
    pooled sums of that fold's resampled subjects (``fold_sums[f]`` is ``[S_f, K, 7]``).

    The draws are :mod:`.statistics`' (same seed, same per-fold streams), so the intensity and
    the occurrence intervals of one evaluation resample the same people."""
    if not fold_sums:
        raise ValueError("intensity bootstrap needs at least one fold")
    fold_sums = [np.asarray(sums, dtype=np.float64) for sums in fold_sums]
    for sums in fold_sums:
        if sums.ndim != 3 or sums.shape[2] != _N_SUMS:
            raise ValueError(f"per-subject sums must be [subjects, AUs, 7], got {sums.shape}")
        check_resamples(resamples, sums.shape[0], sums.shape[1] * _N_SUMS)
    total = None
    for sums, rng in zip(fold_sums, fold_rngs(seed, len(fold_sums))):
        s, k, _ = sums.shape
        weights = subject_weights(s, resamples, rng)
        pooled = (weights @ sums.reshape(s, k * _N_SUMS)).reshape(-1, k, _N_SUMS)
        icc, r, mae, _ = metric_arrays(pooled)
        replicate = np.stack([icc, r, mae])
        total = replicate if total is None else total + replicate
    total /= len(fold_sums)
    return total[0], total[1], total[2]


def intensity_intervals(per_fold: Sequence[dict], eval_aus: Sequence[int],
                        resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                        level: float = DEFAULT_LEVEL) -> dict | None:
    """Subject-bootstrap intervals of every AU's ICC / r / MAE and of their means over
    ``eval_aus`` and over all AUs, for the mean over the folds ``per_fold`` (dicts of
    :meth:`IntensityMetrics.as_dict`); None when a fold has no per-subject sums."""
    folds = [IntensityMetrics.from_dict(d) for d in per_fold]
    if not resamples or not folds or any(not f.subject_sums for f in folds):
        return None
    aus = folds[0].au_ids
    chosen = [aus.index(int(a)) for a in eval_aus if int(a) in aus]
    out: dict = {"resamples": int(resamples), "seed": int(seed), "level": float(level),
                 "method": method_line(resamples, seed, level,
                                       subjects=sum(len(f.subject_sums) for f in folds) or None),
                 "degenerate": min(len(f.subject_sums) for f in folds) < MIN_CI_SUBJECTS}
    for name, samples in zip(("icc", "pearson", "mae"),
                             bootstrap_intensity([f.subject_sums for f in folds], resamples, seed)):
        out[name] = percentile_interval(samples, level).tolist()
        out[f"mean_{name}"] = percentile_interval(samples[:, chosen].mean(1), level).tolist()
        out[f"mean_{name}_all"] = percentile_interval(samples.mean(1), level).tolist()
    return out


# --------------------------------------------------------------------------------------------------
# Tables

#: What the intensity CSVs' numbers are measured in (their comment block says it).
INTENSITY_UNITS = ("ICC(3,1) and Pearson r unitless (-1 to 1); MAE in FACS intensity levels "
                   "(0-5 scale)")

#: Published DISFA intensity figures of peers, per AU, as ``{name: {"source": citation,
#: "metric": "icc", "values": {au: value}}}``. A peer goes in only with a source read for it;
#: an AU a source does not give stays an empty cell. None is filled in yet: no per-AU DISFA
#: figure could be read in a primary source (docs/disfa.md, "Intensity"), and guessing is worse
#: than an empty row.
PEER_INTENSITY: dict[str, dict] = {}

#: Published DISFA intensity figures that a source gives only as a mean: printed under the table
#: with their protocol, never placed in an AU's cell or an "Avg" column whose AUs they may not
#: share.
PEER_INTENSITY_MEANS: list[dict] = [
    {"name": "LibreFace", "metric": "Pearson r", "mean": 0.63,
     "source": "Chang et al., LibreFace, WACV 2024, arXiv:2308.10713 (abstract)",
     "protocol": "DISFA, 5-fold subject cross-validation (LibreFace README); per-AU figures, "
                 "ICC and the AUs averaged over are not given there"},
]


def peer_means_note() -> str:
    """The lines under an intensity table that quote peers' published means."""
    if not PEER_INTENSITY_MEANS:
        return ""
    lines = [f"- {p['name']}: mean {p['metric']} {p['mean']:.2f} [{p['source']}]; {p['protocol']}"
             for p in PEER_INTENSITY_MEANS]
    return ("\nPeers' published DISFA means (other protocols and folds: a pointer, not a paired "
            "comparison):\n\n" + "\n".join(lines) + "\n")


def _fmt(value: float | None) -> str:
    return "" if value is None or not np.isfinite(value) else f"{value:.2f}"


def _num(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), 6)


def _fmt_ci(value: float, ci: Sequence[float] | None, degenerate: bool = False) -> Num:
    """The text for people; value and interval as numbers for the CSV (``cells.Num``)."""
    fields = {"": _num(value), "ci_low": _num(ci[0]) if ci else None,
              "ci_high": _num(ci[1]) if ci else None}
    if ci is None:
        return Num(_fmt(value), fields)
    return Num(f"{_fmt(value)} [{_fmt(ci[0])}, {_fmt(ci[1])}]", fields, degenerate)


def _metric_cells(m: IntensityMetrics, eval_aus: Sequence[int], ci: dict | None
                  ) -> list[tuple[str, list[str]]]:
    """(metric name, cells: per AU, mean over ``eval_aus``, mean over all) for ICC, r, MAE;
    each cell with its interval when ``ci`` (from :func:`intensity_intervals`) is given."""
    chosen = m.subset(eval_aus)
    bad = bool(ci and ci.get("degenerate"))
    out = []
    for name, key, values, mean_chosen in (("ICC(3,1)", "icc", m.icc, chosen.mean_icc),
                                           ("Pearson r", "pearson", m.pearson, chosen.mean_pearson),
                                           ("MAE", "mae", m.mae, chosen.mean_mae)):
        per_au = [_fmt_ci(v, ci[key][j] if ci else None, bad) for j, v in enumerate(values)]
        out.append((Num(name + (" [95% CI]" if ci else ""), {"": key}),
                    [*per_au, _fmt_ci(mean_chosen, ci[f"mean_{key}"] if ci else None, bad),
                     _fmt_ci(float(np.mean(values)), ci[f"mean_{key}_all"] if ci else None,
                             bad)]))
    return out


def intensity_rows(results: Sequence[tuple[str, dict]], eval_aus: Sequence[int],
                   intervals: dict[str, dict] | None = None
                   ) -> tuple[list[str], list[list[str]]]:
    """ICC / r / MAE rows per labelled result (e.g. per fold and the mean), every AU, then the
    mean over ``eval_aus`` (the occurrence table's 8) and over all AUs; peers' rows after.
    ``intervals``: :func:`intensity_intervals` by label, for the rows that carry them."""
    aus = [int(a) for a in results[0][1]["au_ids"]]
    header = ["", "metric", *[f"AU{a}" for a in aus], f"Avg ({len(eval_aus)})", f"Avg ({len(aus)})"]
    rows = []
    for label, d in results:
        ci = (intervals or {}).get(label)
        rows += [[label, name, *cells]
                 for name, cells in _metric_cells(IntensityMetrics.from_dict(d), eval_aus, ci)]
    for name, peer in PEER_INTENSITY.items():
        values = [peer["values"].get(a) for a in aus]
        known8 = [peer["values"][a] for a in eval_aus if a in peer["values"]]
        rows.append([f"{name} [{peer['source']}]", peer.get("metric", "ICC(3,1)"),
                     *map(_fmt, values),
                     _fmt(float(np.mean(known8))) if len(known8) == len(eval_aus) else "",
                     _fmt(float(np.mean([v for v in values if v is not None])))
                     if all(v is not None for v in values) else ""])
    return header, rows


def intensity_markdown(metrics: dict, eval_aus: Sequence[int] | None = None,
                       title: str = "Intensity (0-5)") -> str:
    """One result's intensity table in Markdown, with the note on undefined values."""
    from .records import markdown_table

    eval_aus = list(eval_aus or metrics.get("mean_over") or metrics["au_ids"])
    ci = intensity_intervals([metrics], eval_aus)
    header, rows = intensity_rows([("test", metrics)], eval_aus, {"test": ci} if ci else None)
    method = f"{ci['method']}.\n\n" if ci else ""
    return (f"\n{title}\n\n{method}{markdown_table(header, rows)}\n"
            f"{undefined_note([metrics])}")


def undefined_note(results: Sequence[dict]) -> str:
    undefined = sorted({a for d in results for a in d.get("undefined", [])})
    if not undefined:
        return ""
    return (f"\nICC and r of AU{', AU'.join(map(str, undefined))} are undefined (the predictions or "
            "the coded intensities do not vary over the frames) and are shown as 0.00.\n")


def intensity_report(per_fold: Sequence[tuple[int, dict]], eval_aus: Sequence[int], title: str,
                     protocol: str, resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                     notes: Sequence[str] = ()) -> tuple[list[str], list[list[str]], str]:
    """The intensity table written beside the occurrence table: each fold's ICC(3,1) / r / MAE
    per AU, the unweighted mean over folds with subject-bootstrap intervals (when the results
    keep per-subject sums and ``resamples`` > 0), then peers' published rows; as
    (header, rows, md). ``notes``: lines under the title (the task line)."""
    from .records import markdown_table

    labelled = [(f"fold {fold}", d) for fold, d in per_fold]
    if len(per_fold) > 1:
        labelled.append(("mean", mean_intensity_over_folds([d for _, d in per_fold])))
    ci = intensity_intervals([d for _, d in per_fold], eval_aus, resamples, seed)
    header, rows = intensity_rows(labelled, eval_aus, {labelled[-1][0]: ci} if ci else None)
    peers = ("" if PEER_INTENSITY else "\nPeers: no published per-AU DISFA intensity figure "
             "is listed yet (see docs/disfa.md).\n") + peer_means_note()
    method = f"{ci['method']}.\n\n" if ci else ""
    few = degenerate_line({fold: len((d.get("per_subject") or {}).get("subjects") or [])
                           for fold, d in per_fold}) \
        if ci and ci.get("degenerate") else None
    method += f"{few}\n\n" if few else ""
    lines = "".join(f"{n}\n\n" for n in notes)
    text = (f"# {title}\n\n{lines}Ours: {protocol}; predictions clipped to 0-5; ICC(3,1), "
            "Pearson r and "
            f"MAE pooled over all frames of each fold's held-out subjects; 'Avg ({len(eval_aus)})' "
            f"is the mean over the occurrence table's AUs.\n\n{method}{markdown_table(header, rows)}\n"
            f"{undefined_note([d for _, d in per_fold])}{peers}")
    return header, rows, text
