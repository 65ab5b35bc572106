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

#: FACS intensity range (A..E coded 1..5; 0 = absent).
INTENSITY_MIN, INTENSITY_MAX = 0.0, 5.0
_SHIFT = 2.5
_N_SUMS = 7  # n, sx, sy, sxx, syy, sxy, sabs


def intensity_sums(predictions: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray,
                   clip: bool = True) -> np.ndarray:
    """Per-AU ``[K, 7]`` float64 sums (n, Σx, Σy, Σx², Σy², Σxy, Σ|x-y|) of one batch, x the
    (clipped) predictions and y the coded intensities, both shifted by 2.5."""
    x = torch.as_tensor(predictions).detach().cpu().double()
    y = torch.as_tensor(targets).detach().cpu().double()
    if x.shape != y.shape or x.dim() != 2:
        raise ValueError(f"predictions {tuple(x.shape)} and targets {tuple(y.shape)} must both "
                         "be [N, K]")
    if clip:
        x = x.clamp(INTENSITY_MIN, INTENSITY_MAX)
    x, y = x - _SHIFT, y - _SHIFT
    n = torch.full((x.shape[1],), float(x.shape[0]), dtype=torch.float64)
    sums = [n, x.sum(0), y.sum(0), (x * x).sum(0), (y * y).sum(0), (x * y).sum(0),
            (x - y).abs().sum(0)]
    return torch.stack(sums, dim=1).numpy()


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
        return IntensityMetrics(aus, [self.icc[i] for i in keep], [self.pearson[i] for i in keep],
                                [self.mae[i] for i in keep], self.n_frames,
                                [a for a in self.undefined if a in aus], aus)

    def as_dict(self) -> dict:
        return {"au_ids": self.au_ids, "icc": self.icc, "pearson": self.pearson, "mae": self.mae,
                "mean_icc": self.mean_icc, "mean_pearson": self.mean_pearson,
                "mean_mae": self.mean_mae, "mean_over": self.mean_over or self.au_ids,
                "n_frames": self.n_frames, "undefined": self.undefined,
                "undefined_reported_as": 0.0}

    @classmethod
    def from_dict(cls, d: dict) -> "IntensityMetrics":
        return cls([int(a) for a in d["au_ids"]], list(d["icc"]), list(d["pearson"]),
                   list(d["mae"]), int(d["n_frames"]), [int(a) for a in d.get("undefined", [])],
                   [int(a) for a in d.get("mean_over", [])])


def metrics_from_sums(sums: np.ndarray, au_ids: Sequence[int],
                      mean_over: Sequence[int] | None = None) -> IntensityMetrics:
    """ICC(3,1), r and MAE per AU from :func:`intensity_sums` totals."""
    sums = np.asarray(sums, dtype=np.float64)
    if sums.shape != (len(au_ids), _N_SUMS):
        raise ValueError(f"sums shape {sums.shape} does not fit {len(au_ids)} AUs")
    n, sx, sy, sxx, syy, sxy, sabs = sums.T
    safe_n = np.maximum(n, 1.0)
    # (n - 1) times the sample (co)variances; the common factor cancels in ICC and r.
    vx = np.maximum(sxx - sx * sx / safe_n, 0.0)
    vy = np.maximum(syy - sy * sy / safe_n, 0.0)
    cxy = sxy - sx * sy / safe_n
    # A (co)variance below rounding noise of the sums is a constant series.
    tiny = 1e-12 * np.maximum(np.maximum(sxx, syy), 1.0)
    defined = (vx > tiny) & (vy > tiny) & (n >= 2)
    icc = np.where(defined, 2 * cxy / np.where(defined, vx + vy, 1.0), 0.0)
    r = np.where(defined, cxy / np.sqrt(np.where(defined, vx * vy, 1.0)), 0.0)
    mae = np.where(n > 0, sabs / safe_n, 0.0)
    ids = [int(a) for a in au_ids]
    return IntensityMetrics(ids, icc.tolist(), np.clip(r, -1.0, 1.0).tolist(), mae.tolist(),
                            int(n[0]) if len(n) else 0,
                            [a for a, ok in zip(ids, defined) if not ok],
                            [int(a) for a in mean_over] if mean_over else [])


def intensity_metrics(predictions, targets, au_ids: Sequence[int],
                      mean_over: Sequence[int] | None = None, clip: bool = True) -> IntensityMetrics:
    """Per-AU metrics of ``[N, K]`` predictions against coded intensities, in one call."""
    return metrics_from_sums(intensity_sums(predictions, targets, clip), au_ids, mean_over)


class IntensityAccumulator:
    """Sums over batches; ``sums_tensor``/``load_sums_tensor`` let DDP ranks all-reduce them."""

    def __init__(self, au_ids: Sequence[int], mean_over: Sequence[int] | None = None) -> None:
        self.au_ids = [int(a) for a in au_ids]
        self.mean_over = list(mean_over) if mean_over else None
        self.sums = np.zeros((len(self.au_ids), _N_SUMS), dtype=np.float64)

    def update(self, predictions: torch.Tensor, targets: torch.Tensor) -> None:
        self.sums += intensity_sums(predictions, targets)

    def sums_tensor(self) -> torch.Tensor:
        return torch.as_tensor(self.sums.reshape(-1), dtype=torch.float64)

    def load_sums_tensor(self, values: torch.Tensor) -> None:
        self.sums = values.cpu().double().numpy().reshape(len(self.au_ids), _N_SUMS)

    def compute(self) -> IntensityMetrics:
        return metrics_from_sums(self.sums, self.au_ids, self.mean_over)


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


# --------------------------------------------------------------------------------------------------
# Tables

#: Published DISFA intensity figures of peers, per AU, as ``{name: {"source": citation,
#: "metric": "icc", "values": {au: value}}}``. A peer goes in only with a source read for it;
#: an AU a source does not give stays an empty cell. None is filled in yet: no source could be
#: checked for this release of the toolkit (docs/disfa.md, "Intensity"), and guessing is worse
#: than an empty row.
PEER_INTENSITY: dict[str, dict] = {}


def _fmt(value: float | None) -> str:
    return "" if value is None or not np.isfinite(value) else f"{value:.2f}"


def intensity_rows(results: Sequence[tuple[str, dict]], eval_aus: Sequence[int]
                   ) -> tuple[list[str], list[list[str]]]:
    """ICC / r / MAE rows per labelled result (e.g. per fold and the mean), every AU, then the
    mean over ``eval_aus`` (the occurrence table's 8) and over all AUs; peers' rows after."""
    aus = [int(a) for a in results[0][1]["au_ids"]]
    header = ["", "metric", *[f"AU{a}" for a in aus], f"Avg ({len(eval_aus)})", f"Avg ({len(aus)})"]
    rows = []
    for label, d in results:
        m = IntensityMetrics.from_dict(d)
        eight = m.subset(eval_aus)
        for name, values, mean8 in (("ICC(3,1)", m.icc, eight.mean_icc),
                                    ("Pearson r", m.pearson, eight.mean_pearson),
                                    ("MAE", m.mae, eight.mean_mae)):
            rows.append([label, name, *map(_fmt, values), _fmt(mean8), _fmt(float(np.mean(values)))])
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
    header, rows = intensity_rows([("test", metrics)], eval_aus)
    return f"\n{title}\n\n{markdown_table(header, rows)}\n{undefined_note([metrics])}"


def undefined_note(results: Sequence[dict]) -> str:
    undefined = sorted({a for d in results for a in d.get("undefined", [])})
    if not undefined:
        return ""
    return (f"\nICC and r of AU{', AU'.join(map(str, undefined))} are undefined (the predictions or "
            "the coded intensities do not vary over the frames) and are shown as 0.00.\n")


def intensity_report(per_fold: Sequence[tuple[int, dict]], eval_aus: Sequence[int], title: str,
                     protocol: str) -> tuple[list[str], list[list[str]], str]:
    """The intensity table written beside the occurrence table: each fold's ICC(3,1) / r / MAE
    per AU, the unweighted mean over folds, then peers' published rows; as (header, rows, md)."""
    from .records import markdown_table

    labelled = [(f"fold {fold}", d) for fold, d in per_fold]
    if len(per_fold) > 1:
        labelled.append(("mean", mean_intensity_over_folds([d for _, d in per_fold])))
    header, rows = intensity_rows(labelled, eval_aus)
    peers = ("" if PEER_INTENSITY else
             "\nPeers: no published DISFA intensity figure is listed yet (see docs/disfa.md).\n")
    text = (f"# {title}\n\nOurs: {protocol}; predictions clipped to 0-5; ICC(3,1), Pearson r and "
            f"MAE pooled over all frames of each fold's held-out subjects; 'Avg ({len(eval_aus)})' "
            f"is the mean over the occurrence table's AUs.\n\n{markdown_table(header, rows)}\n"
            f"{undefined_note([d for _, d in per_fold])}{peers}")
    return header, rows, text
