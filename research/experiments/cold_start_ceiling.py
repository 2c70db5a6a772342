"""How far can ml-100k's item metadata take cold-start ranking (Table 7, issue 21's 3x target)?

On the ``cold_start_items`` split (seed 0, half of the items cold), every cold event is one case ranked among the
cold items. Besides uniform random (analytic MRR = H(N)/N), three rankings that use no user at all:

- ``genre set``: a cold item's score is the mean training count of the warm items with the same genre set
  (add-5 smoothed toward the mean);
- ``genres + year``: least squares of log(1 + training count) on genre indicators and the release year, fitted
  on the warm items, applied to the cold ones (the same information as HRNN-meta's metadata bias b_meta);
- ``genres + year buckets``: the same with the year as buckets (``YEAR_EDGES``) instead of a linear term;
- ``oracle``: the cold items ordered by their true number of target events (the best any non-personalised
  ranking can do; it reads the targets, so it is a ceiling, not a model).

Both on the validation split (84 pseudo-cold items, training counts of ``valid_train``) and on the test split
(841 cold items, training counts of ``train``). ``--fit`` also fits HRNN-meta on ``valid_train`` (the
cold-start command's settings: lambda ~ U[0, 1], no trend term) and ranks the validation cases with it, and with
its metadata bias b_meta alone. Usage::

    python research/experiments/cold_start_ceiling.py SNAPSHOT --output R.json [--seeds 0,1,2] [--fit]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch


def _mrr(score: np.ndarray, candidates: np.ndarray, targets: np.ndarray, n_items: int) -> float:
    """Mean 1 / rank of each target among ``candidates`` (pessimistic ties)."""
    idx = np.flatnonzero(candidates)
    srt = np.sort(score[idx])
    rank = np.zeros(n_items)
    rank[idx] = len(idx) - np.searchsorted(srt, score[idx], side="left")
    return float(np.mean(1.0 / rank[targets]))


def _metadata(snapshot: Path, n_items: int) -> tuple[np.ndarray, list[str]]:
    items = pq.read_table(snapshot / "items.parquet", columns=["item_idx", "categorical", "numeric"]).to_pylist()
    year, genres = np.full(n_items, np.nan), [""] * n_items
    for it in items:
        year[it["item_idx"]] = dict(it["numeric"] or []).get("year", np.nan)
        genres[it["item_idx"]] = dict(it["categorical"] or []).get("genres") or ""
    return year, genres


YEAR_EDGES = (1930, 1950, 1970, 1980, 1990, 1993, 1995, 1996, 1997, 1998)  # "genres + year buckets"


def rankings(counts: np.ndarray, warm: np.ndarray, year: np.ndarray, genres: list[str]) -> dict[str, np.ndarray]:
    """Non-personalised scores of every item from the warm items' training ``counts``."""
    n = len(counts)
    total, members = {}, {}
    for j in np.flatnonzero(warm):
        total[genres[j]] = total.get(genres[j], 0.0) + counts[j]
        members[genres[j]] = members.get(genres[j], 0) + 1
    mean = counts[warm].mean()
    by_set = np.array([(total.get(genres[j], 0.0) + 5 * mean) / (members.get(genres[j], 0) + 5) for j in range(n)])
    names = sorted({g for s in genres for g in s.split("|") if g})
    x = np.zeros((n, len(names) + 2))
    for j in range(n):
        for g in genres[j].split("|"):
            if g:
                x[j, names.index(g)] = 1.0
    x[:, -2], x[:, -1] = np.nan_to_num(year - np.nanmean(year)), 1.0
    coef, *_ = np.linalg.lstsq(x[warm], np.log1p(counts[warm]), rcond=None)
    # the year as buckets: new releases draw most ratings, a shape a linear year term cannot follow
    years = np.digitize(np.nan_to_num(year, nan=np.nanmedian(year)), YEAR_EDGES)
    xb = np.concatenate([x[:, :-2], np.eye(len(YEAR_EDGES) + 1)[years]], axis=1)
    coef_b, *_ = np.linalg.lstsq(xb[warm], np.log1p(counts[warm]), rcond=None)
    return {"genre set": by_set, "genres + year": x @ coef, "genres + year buckets": xb @ coef_b}


def block(cases, candidates: np.ndarray, counts: np.ndarray, warm: np.ndarray, year, genres, n_items: int) -> dict:
    targets = np.asarray(cases.target_items)
    n_c = int(candidates.sum())
    out = {"candidates": n_c, "cases": len(targets), "random (analytic)": float(np.mean(1.0 / np.arange(1, n_c + 1)))}
    for name, score in rankings(counts, warm, year, genres).items():
        out[name] = _mrr(score, candidates, targets, n_items)
    out["oracle (target counts)"] = _mrr(np.bincount(targets, minlength=n_items).astype(float), candidates, targets,
                                         n_items)
    return out


def fit_on_validation(split) -> dict:
    """HRNN-meta on valid_train with the cold-start command's settings; validation MRR of its cold scores and of
    its metadata bias alone."""
    from hrnn_core.config import ModelConfig, TrainConfig  # noqa: PLC0415
    from hrnn_core.evaluation.harness import make_scorer, score_cases, train_data  # noqa: PLC0415

    scorer = make_scorer("hrnn", model=dataclasses.replace(ModelConfig(), trend_weight=0.0),
                         train=dataclasses.replace(TrainConfig(), item_meta_mix=None, threads=1, progress=False))
    with tempfile.TemporaryDirectory(prefix="cold-ceiling-") as work:
        scorer.fit(train_data(split, "valid_train", 0, Path(work)))
    cand = np.asarray(split.valid.candidate_mask)
    n_c = int(cand.sum())
    acc, _ = score_cases(scorer, split.valid, split.n_items, 512, n_c, (n_c,))
    with torch.no_grad():
        _, b_meta = scorer.model.item_vectors(None, 1.0)
    return {"HRNN-meta": acc.summary()[f"mrr@{n_c}"],
            "HRNN-meta b_meta alone": _mrr(b_meta.float().numpy(), cand, np.asarray(split.valid.target_items),
                                           split.n_items)}


def main() -> None:
    from hrnn_core.evaluation.protocols import build_split  # noqa: PLC0415
    from hrnn_core.evaluation.splits import SnapshotData  # noqa: PLC0415

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("snapshot", type=Path)
    ap.add_argument("--output", type=Path, required=True)
    ap.add_argument("--fit", action="store_true", help="also fit HRNN-meta on valid_train (minutes)")
    ap.add_argument("--seeds", default="0", help="item-split seeds, e.g. 0,1,2 (the cold half differs per seed)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = SnapshotData.load(args.snapshot)
    report = {"snapshot_id": data.snapshot_id, "seeds": {}}
    for seed in [int(x) for x in args.seeds.split(",")]:
        split = build_split("cold_start_items", data, cold_fraction=0.5, seed=seed)
        year, genres = _metadata(args.snapshot, split.n_items)
        valid_counts = np.asarray(split.valid_item_frequency, dtype=float)
        test_counts = np.asarray(split.item_frequency, dtype=float)
        cold = np.asarray(split.candidate_mask)
        one = {"protocol": split.describe(),
               "validation": block(split.valid, np.asarray(split.valid.candidate_mask), valid_counts,
                                   valid_counts > 0, year, genres, split.n_items),
               "test": block(split.test, cold, test_counts, ~cold, year, genres, split.n_items)}
        if args.fit:
            one["validation"].update(fit_on_validation(split))
        for part in ("validation", "test"):
            r = one[part]
            r["x random"] = {k: round(v / r["random (analytic)"], 3) for k, v in r.items()
                             if isinstance(v, float) and k != "random (analytic)"}
        report["seeds"][str(seed)] = one
        print(f"seed {seed}:", json.dumps({p: one[p]["x random"] for p in ("validation", "test")}), flush=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
