"""Training curves as PNG files (matplotlib's Agg backend: no display needed)."""
from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
from matplotlib.ticker import MaxNLocator  # noqa: E402


def _save(fig, path: Path) -> Path:
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _integer_epochs(ax) -> None:
    """Epoch ticks at whole epochs only (a 3-epoch run otherwise shows 1.25, 1.5, ...)."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _footer(fig, notes: Sequence[str]) -> None:
    """The recipe (and any other notes) under the axes, so a PNG says how it was made."""
    if notes:
        lines = [line for note in notes for line in textwrap.wrap(note, 110)]
        fig.text(0.01, -0.02, "\n".join(lines), ha="left", va="top", fontsize=7, color="0.3")


def plot_history(
    history: Sequence[dict[str, Any]], au_ids: Sequence[int], out_dir: Path | str,
    *, split: str = "val", title: str = "", occurrence: bool = True, notes: Sequence[str] = (),
) -> list[Path]:
    """``loss.png``, ``mean_f1.png`` and ``per_au_f1.png`` from the per-epoch history rows
    (the F1 plots only with ``occurrence``: a trained occurrence head); ``notes`` (the recipe
    line) under each figure.

    Each row needs ``epoch``, ``train_loss`` and ``eval`` (an ``AUMetrics.as_dict()`` of the
    selection split, ``loss`` optional); ``best_epoch`` in the last row is marked.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not history:
        return []
    epochs = [row["epoch"] for row in history]
    best = history[-1].get("best_epoch")
    suffix = f" — {title}" if title else ""
    paths = []

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [row["train_loss"] for row in history], marker="o", label="train (drawn batches)")
    eval_loss = [row["eval"].get("loss") for row in history]
    if all(v is not None for v in eval_loss):
        ax.plot(epochs, eval_loss, marker="s", label=f"{split} frames")
    ax.set_xlabel("epoch")
    ax.set_ylabel("summed branch BCE")
    ax.set_title(f"Loss{suffix}")
    ax.legend()
    ax.grid(alpha=0.3)
    _integer_epochs(ax)
    _footer(fig, notes)
    paths.append(_save(fig, out_dir / "loss.png"))
    if not occurrence:
        return paths

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [100 * row["eval"]["mean_f1"] for row in history], marker="o",
            label=f"mean F1 ({split})")
    ax.plot(epochs, [100 * row["eval"]["mean_accuracy"] for row in history], marker="s",
            label=f"mean accuracy ({split})")
    if best:
        ax.axvline(best, color="grey", linestyle="--", label=f"best epoch {best}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("percent")
    ax.set_ylim(0, 100)
    ax.set_title(f"Mean F1 / accuracy at 0.5{suffix}")
    ax.legend()
    ax.grid(alpha=0.3)
    _integer_epochs(ax)
    _footer(fig, notes)
    paths.append(_save(fig, out_dir / "mean_f1.png"))
    paths.append(_per_au_f1(history, au_ids, out_dir, split, suffix, best, notes))
    return paths


def _per_au_f1(history: Sequence[dict[str, Any]], au_ids: Sequence[int], out_dir: Path,
               split: str, suffix: str, best: int | None, notes: Sequence[str]) -> Path:
    """One small panel an AU (shared axes), not every AU's line in one crowded axis."""
    epochs = [row["epoch"] for row in history]
    cols = min(4, max(len(au_ids), 1))
    rows = -(-len(au_ids) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 1.9 * rows + 0.6), sharex=True,
                             sharey=True, squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= len(au_ids):
            ax.set_visible(False)
            continue
        ax.plot(epochs, [100 * row["eval"]["f1"][k] for row in history], marker=".")
        if best:
            ax.axvline(best, color="grey", linestyle="--", linewidth=0.8)
        ax.set_title(f"AU{au_ids[k]}", fontsize=9)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        _integer_epochs(ax)
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    for ax in axes[:, 0]:
        ax.set_ylabel("F1 (%)")
    fig.suptitle(f"Per-AU F1 on {split} frames{suffix}"
                 + (f" (dashed: best epoch {best})" if best else ""), fontsize=10)
    fig.tight_layout()
    _footer(fig, notes)
    return _save(fig, out_dir / "per_au_f1.png")


def plot_subject_heatmap(
    subjects: Sequence[str], au_ids: Sequence[int], f1: Any, path: Path | str,
    *, title: str = "", notes: Sequence[str] = (), positives: Any = None,
) -> Path:
    """F1 (percent) of each held-out subject (rows) and AU (columns), with the values written
    in the cells; ``notes`` (protocol, recipe) go under the title. Cells of a subject without
    a positive frame of the AU (``positives`` 0: F1 is 0 by convention, not a miss) are grey
    and marked with a dash."""
    import numpy as np

    values = 100 * np.asarray(f1, dtype=np.float64).reshape(len(subjects), len(au_ids))
    empty = (np.asarray(positives).reshape(values.shape) == 0) if positives is not None \
        else np.zeros(values.shape, bool)
    values = np.where(empty, np.nan, values)
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(au_ids), 1.6 + 0.32 * len(subjects)))
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.85")
    image = ax.imshow(values, cmap=cmap, vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(au_ids)), [f"AU{a}" for a in au_ids], fontsize=8)
    ax.set_yticks(range(len(subjects)), list(subjects), fontsize=8)
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            text = "–" if empty[i, j] else f"{values[i, j]:.0f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="black" if empty[i, j] or values[i, j] >= 55 else "white")
    fig.colorbar(image, ax=ax, label="F1 (%)", fraction=0.04)
    width = max(60, int(14 * len(au_ids)))
    lines = [line for note in notes for line in textwrap.wrap(note, width)]
    if empty.any():
        lines.append("–: the subject has no positive frame of that AU (F1 0 by convention)")
    ax.set_title("\n".join([title or "F1 per held-out subject", *lines]), fontsize=7, loc="left")
    return _save(fig, Path(path))
