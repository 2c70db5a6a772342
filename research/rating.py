"""The rating prediction task of the paper's Tables 4-5 (section 4.3): predict each test event's
value (its rating) and report RMSE (and MAE) over all test events of a protocol split.

Cases are a protocol's test cases (``hrnn_core.evaluation.splits``) whose target event carries a value:
a case reads events [0, pos) of its row (for ``temporal``: the owner's training events and its
earlier test events, as they stream in) and predicts the target event's raw ``event_value``.
Events without a value are left out and counted. Models:

``global_mean``      the training mean rating (a floor every model must beat).
``rolling_average``  the paper's baseline: the mean of (the item's mean past rating, the user's
                     mean past rating). Past = what the ranking evaluation lets the case read:
                     every training event, plus the owner's readable history (its earlier test
                     events); never the event's own rating or anything later. Falls back to
                     whichever mean exists, then to the training mean.
``fm``               the factorization machine of ``baselines/fm.py`` with a squared loss
                     (``research/fm_rating.py``); epochs picked on the protocol's validation cases.
``gru`` / ``hrnn`` / ``hrnn_no_feedback``
                     a recurrent model trained as usual for next-item ranking
                     (``HRNNScorer.fit``: plain GRU, HRNN-meta, HRNN-meta without the feedback
                     input) with a value decoder on its state (``research.rating_head``).

The value decoder and how it is fitted (with or without fine-tuning the network) are in
``research.rating_head``; the cases, RMSE and MAE in ``research.rating_cases``. Every model's prediction is clipped to the training ratings' range.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa

from hrnn_core.evaluation.baselines.features import flat_events
from hrnn_core.evaluation.metrics import paired_test
from hrnn_core.evaluation.splits import Split
from research.fm_rating import event_values
from research.rating_cases import RatedCases, RatingError, mae, rated_cases, rmse, training_ratings

BASELINES = ("global_mean", "rolling_average", "fm")
RECURRENT = ("gru", "hrnn", "hrnn_no_feedback")
MODELS = BASELINES + RECURRENT
REFERENCE = "hrnn"  # the model the paired tests compare against the others


# --------------------------------------------------------------------------- rolling average


def rolling_average(train: pa.Table, rated: RatedCases, n_items: int) -> np.ndarray:
    """(N,) the paper's rolling-average prediction for every rated case (see the module docstring).

    item mean = over the item's training events and the owner's readable non-training events on
        the item (its earlier test events); user mean = over the owner's readable events [0, pos).
    Both strictly before the case's event in the protocol's order; mean of the two, else
    whichever exists, else the training mean.
    """
    flat_t = flat_events(train)
    v_t = event_values(train)
    ok = np.isfinite(v_t)
    item_sum = np.bincount(flat_t.item[ok], weights=v_t[ok], minlength=n_items)
    item_cnt = np.bincount(flat_t.item[ok], minlength=n_items).astype(np.float64)
    global_mean = float(v_t[ok].mean()) if ok.any() else float("nan")

    c = rated.cases
    hist = flat_events(c.sequences)  # the histories the cases read
    v_h = event_values(c.sequences)
    fin = np.isfinite(v_h)
    start = hist.offsets[c.row]  # (N,) flat index of each case's row start
    # user: prefix sums of the finite values along each row, read up to pos (exclusive)
    cs_v = np.concatenate([[0.0], np.cumsum(np.where(fin, v_h, 0.0))])
    cs_n = np.concatenate([[0], np.cumsum(fin)])
    user_sum, user_cnt = cs_v[start + c.pos] - cs_v[start], (cs_n[start + c.pos] - cs_n[start]).astype(np.float64)
    # item: add the owner's readable events on the item that are not training events. Key each
    # such event by (row, item, position) and sum those with the case's (row, item) and a lower
    # position: one sort and two binary searches.
    extra = fin & ~np.isin(hist.event_id, np.sort(flat_t.event_id))
    e = np.flatnonzero(extra)
    row_e = hist.row[e]
    width = int(np.diff(hist.offsets).max()) + 1 if len(hist.offsets) > 1 else 1
    key_e = (row_e * n_items + hist.item[e]) * width + (e - hist.offsets[row_e])
    order = np.argsort(key_e, kind="stable")
    key_e, val_e = key_e[order], v_h[e][order]
    cs_e = np.concatenate([[0.0], np.cumsum(val_e)])
    base = (c.row.astype(np.int64) * n_items + rated.item) * width
    lo, hi = np.searchsorted(key_e, base, "left"), np.searchsorted(key_e, base + c.pos, "left")
    i_sum = item_sum[rated.item] + cs_e[hi] - cs_e[lo]
    i_cnt = item_cnt[rated.item] + (hi - lo)

    with np.errstate(invalid="ignore", divide="ignore"):
        item_mean = np.where(i_cnt > 0, i_sum / i_cnt, np.nan)
        user_mean = np.where(user_cnt > 0, user_sum / user_cnt, np.nan)
    both = np.stack([item_mean, user_mean])
    n = np.isfinite(both).sum(0)
    pred = np.where(n > 0, np.nansum(both, 0) / np.maximum(n, 1), global_mean)
    return pred


# --------------------------------------------------------------------------- FM


def fit_fm_rating(split: Split, valid: RatedCases, seed: int, options: dict | None,
                  say: Callable[[str], None]) -> tuple[object, dict]:
    """The rating FM: epochs picked on validation (fit on ``valid_train``), refit on ``train``."""
    from research.fm_rating import FMRatingRegressor  # noqa: PLC0415
    from hrnn_core.evaluation.harness import train_data  # noqa: PLC0415

    options = dict(options or {})
    info: dict = {}
    if len(valid):
        curve: list[float] = []

        def on_epoch(_epoch: int, fm) -> None:
            c = valid.cases
            curve.append(rmse(fm.predict(c.sequences, c.row, c.pos, c.owner, valid.item), valid.rating))

        FMRatingRegressor(**options).fit(train_data(split, "valid_train", seed), on_epoch=on_epoch)
        options["epochs"] = int(np.argmin(curve)) + 1
        info = {"epochs": options["epochs"], "valid_rmse": min(curve)}
        say(f"  fm: best validation RMSE {min(curve):.4f} after {options['epochs']} epochs")
    fm = FMRatingRegressor(**options)
    fm.fit(train_data(split, "train", seed))
    return fm, info


# --------------------------------------------------------------------------- the experiment


def recurrent_options(name: str, model_cfg=None, train_cfg=None) -> dict:
    """HRNNScorer options of a recurrent variant from the shipped model/train configs."""
    from hrnn_core.config import ModelConfig, TrainConfig  # noqa: PLC0415

    model_cfg = model_cfg or ModelConfig()
    train_cfg = train_cfg or TrainConfig()
    if name == "gru":
        return {"model": model_cfg, "train": train_cfg, "plain_gru": True}
    if name == "hrnn_no_feedback":
        return {"model": dataclasses.replace(model_cfg, use_feedback=False), "train": train_cfg}
    return {"model": model_cfg, "train": train_cfg}


def run_rating(split: Split, models: list[str] | tuple[str, ...] = MODELS, *, seed: int = 0,
               model_cfg=None, train_cfg=None, head_cfg=None,
               fm_options: dict | None = None, device: str = "cpu",
               progress: Callable[[str], None] | None = None) -> dict:
    """Every model's predictions on the split's rated test events; the report (see the CLI).

    ``head_cfg``: a ``rating_head.RatingHeadConfig`` for the recurrent models (default: its defaults).
    """
    from research.rating_head import RatingHeadConfig, fit_recurrent_rating, predict_head  # noqa: PLC0415

    say = progress or (lambda _msg: None)
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        raise RatingError(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    head_cfg = head_cfg or RatingHeadConfig(seed=seed)
    test, valid = rated_cases(split, split.test), rated_cases(split, split.valid)
    if len(test) == 0:
        raise RatingError(f"{split.protocol}: no test event has a value (event_value); nothing to predict")
    train_values = training_ratings(split.train)
    lo, hi = float(train_values.min()), float(train_values.max())
    say(f"{len(test):,} rated test events ({test.n_unrated:,} without a value left out); "
        f"{len(train_values):,} rated training events, mean {train_values.mean():.4f}")

    preds: dict[str, np.ndarray] = {}
    info: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="hrnn-rating-") as work:
        for name in models:
            t0 = time.perf_counter()
            say(f"fit {name} ...")
            extra: dict = {}
            if name == "global_mean":
                p = np.full(len(test), float(train_values.mean()))
            elif name == "rolling_average":
                p = rolling_average(split.train, test, split.n_items)
            elif name == "fm":
                fm, extra = fit_fm_rating(split, valid, seed, fm_options, say)
                c = test.cases
                p = fm.predict(c.sequences, c.row, c.pos, c.owner, test.item)
            else:
                from hrnn_core.evaluation.harness import train_data  # noqa: PLC0415
                from hrnn_core.evaluation.hrnn_scorer import HRNNScorer  # noqa: PLC0415

                scorer = HRNNScorer(device=device, **recurrent_options(name, model_cfg, train_cfg))
                scorer.fit(train_data(split, "train", seed, Path(work) / name))
                head, extra = fit_recurrent_rating(scorer, split, valid, head_cfg, say)
                p = predict_head(head, scorer.request_states(test.batch()), test.item)
                extra["gru_epochs"] = len(scorer.history)
            preds[name] = np.clip(p, lo, hi)
            info[name] = {**extra, "fit_seconds": round(time.perf_counter() - t0, 1)}
            say(f"{name}: RMSE {rmse(preds[name], test.rating):.4f}")

    sq = {n: (p - test.rating) ** 2 for n, p in preds.items()}
    report = {
        "dataset": "",
        "protocol": split.protocol,
        "protocol_description": split.describe(),
        "n_events": len(test),
        "n_users": int(len(np.unique(test.cases.owner))),
        "n_unrated_left_out": test.n_unrated,
        "rating_range": [lo, hi],
        "head_config": dataclasses.asdict(head_cfg),
        "fm_options": dict(fm_options or {}),
        "models": {n: {"rmse": rmse(p, test.rating), "mae": mae(p, test.rating), **info[n]} for n, p in preds.items()},
        "significance": {},
    }
    baselines = [n for n in BASELINES if n in preds]
    if REFERENCE in preds and baselines:
        best = min(baselines, key=lambda n: report["models"][n]["rmse"])
        report["best_baseline"] = best
        for other in preds:
            if other != REFERENCE:  # mean_diff < 0: HRNN-meta's squared errors are smaller
                report["significance"][f"{REFERENCE}_vs_{other}"] = paired_test(sq[REFERENCE], sq[other], seed=seed)
    report["_squared_errors"] = sq  # in-process callers (tests); not written to JSON
    return report


def format_table(report: dict) -> str:
    """The printed table: one row per model, best RMSE first."""
    lines = [f"{'model':<18}{'RMSE':>9}{'MAE':>9}{'fit s':>9}", "-" * 45]
    for name, m in sorted(report["models"].items(), key=lambda kv: kv[1]["rmse"]):
        lines.append(f"{name:<18}{m['rmse']:>9.4f}{m['mae']:>9.4f}{m.get('fit_seconds', 0.0):>9.1f}")
    for name, t in report["significance"].items():
        lines.append(f"  {name}: squared-error diff {t['mean_diff']:+.4f} "
                     f"(95% CI {t['ci_low']:+.4f}..{t['ci_high']:+.4f}, p={t['p_value']:.3g})")
    return "\n".join(lines)
