"""The charts of the HTML report (``evaluation/report.py``), each a matplotlib Figure turned into a ``data:`` URI
(base64 PNG), so the page needs no other file and no network. No pyplot: no global backend state."""

from __future__ import annotations

import base64
import io

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22")


def data_uri(fig: Figure, dpi: int = 100) -> str:
    """The figure as ``data:image/png;base64,...``."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})  # no matplotlib URL in the PNG either
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def interval_chart(rows: list[dict], metrics: tuple[str, ...]) -> str:
    """Each model's mean with its 95% interval (dot and whisker), one panel per metric; best model on top."""
    fig = Figure(figsize=(4.2 * len(metrics), 0.45 * len(rows) + 1.3))
    axes = np.atleast_1d(fig.subplots(1, len(metrics), sharey=True))
    ys = np.arange(len(rows))[::-1]
    for ax, metric in zip(axes, metrics):
        for y, row in zip(ys, rows):
            ci = row["intervals"].get(metric)
            if ci is None:
                continue
            ax.errorbar(ci["mean"], y, xerr=[[ci["mean"] - ci["ci_low"]], [ci["ci_high"] - ci["mean"]]],
                        fmt="o", capsize=3, color=COLORS[0] if row["name"] != "hrnn" else COLORS[3])
        ax.set_title(f"{metric} (95% interval)")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(ys, [r["name"] for r in rows])
    fig.tight_layout()
    return data_uri(fig)


def curves_chart(name: str, history: list[dict], best_epoch: int | None) -> str:
    """Per-epoch training (and, where the model validates, validation) loss; validation ranking metrics beside."""
    epochs = [h["epoch"] for h in history]
    ranking = [k for k in ("ndcg@10", "hit@10") if any(k in h for h in history)]
    fig = Figure(figsize=(10 if ranking else 5.5, 3.4))
    axes = np.atleast_1d(fig.subplots(1, 2 if ranking else 1))
    ax = axes[0]
    for key, style, label in (("train_loss", "o-", "training loss"), ("val_loss", "s-", "validation loss")):
        vals = [h.get(key, np.nan) for h in history]
        if not all(np.isnan(v) for v in vals):
            ax.plot(epochs, vals, style, ms=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(f"{name}: loss per epoch")
    if ranking:
        for i, key in enumerate(ranking):
            axes[1].plot(epochs, [h.get(key, np.nan) for h in history], "o-", ms=3, color=COLORS[2 + i],
                         label=f"validation {key}")
        axes[1].set_xlabel("epoch")
        axes[1].set_title(f"{name}: validation ranking per epoch")
    for a in axes:
        a.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
        if best_epoch is not None and len(epochs) > 1:
            a.axvline(best_epoch, color="grey", ls="--", lw=1, label=f"kept: epoch {best_epoch}")
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    return data_uri(fig)


def groups_chart(table: dict[str, dict[str, dict]], metric: str, title: str) -> str:
    """Grouped bars: ``metric`` per group (x) for each model (bars); ``table[model][group] = {"n", metric}``."""
    models = list(table)
    groups = list(next(iter(table.values())))
    width = 0.8 / max(1, len(models))
    fig = Figure(figsize=(max(6.0, 1.6 * len(groups) + 2), 3.6))
    ax = fig.subplots()
    x = np.arange(len(groups))
    for i, model in enumerate(models):
        vals = [table[model][g].get(metric) for g in groups]
        ax.bar(x + i * width, [np.nan if v is None else v for v in vals], width, label=model,
               color=COLORS[i % len(COLORS)])
    n = [next(iter(table.values()))[g]["n"] for g in groups]
    ax.set_xticks(x + 0.4 - width / 2, [f"{g}\n({c:,} cases)" for g, c in zip(groups, n)], fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars, never over them
    fig.tight_layout()
    return data_uri(fig)


def shift_chart(before: np.ndarray, after: np.ndarray, before_label: str, after_label: str, tvd: float) -> str:
    """Each item's share of events before (x) and after (y), log-log; items absent on one side sit on the floor."""
    a, b = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    keep = (a > 0) | (b > 0)
    pa_, pb = a[keep] / a.sum(), b[keep] / b.sum()
    floor = 0.5 * min(pa_[pa_ > 0].min(initial=1.0), pb[pb > 0].min(initial=1.0))
    fig = Figure(figsize=(5.2, 4.6))
    ax = fig.subplots()
    ax.scatter(np.maximum(pa_, floor), np.maximum(pb, floor), s=6, alpha=0.5)
    lo, hi = floor, max(pa_.max(), pb.max()) * 1.5
    ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--", label="same share")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"share of events: {before_label}")
    ax.set_ylabel(f"share of events: {after_label}")
    ax.set_title(f"item popularity shift (total variation {tvd:.3f})")
    ax.legend(fontsize=8, title="items with none on one side\nsit on the axes' floor", title_fontsize=7)
    fig.tight_layout()
    return data_uri(fig)
