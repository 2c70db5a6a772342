"""Would a richer repeat term close HRNN-meta's gap to SASRec on session repeats? (issue 20, yoochoose)

SASRec leads HRNN-meta on yoochoose by about 0.04 NDCG@10, nearly all of it on test clicks that repeat an item of
the session (docs/evaluation/sasrec.md). HRNN-meta's repeat term is one log prior added to every item of the owner's
history (``hrnn_core/model/scoring.py``). This study asks whether post-hoc features of the seen items, fitted on
VALIDATION cases, do better: the item's recency bucket (its rank among the owner's distinct items by last event:
0, 1, 2, 3-4, 5-9, 10-19, 20+), how often the owner had it (>= 2, >= 3), and a scale on the model's own score (so
that a rarely clicked repeat is less far behind a popular one), and a gate from the request state on the latest
item (``last_state``: a linear function of the state added to the latest item's score, the post-hoc stand-in for a
trained "click it again" logit), and each item's own rate of being clicked again by the same owner in the training
data (``item_rate``: smoothed log odds, on every seen item, and again on the latest one: some products are viewed
over and over, and a rare one has no learned output vector to say so).

Per seed: HRNN-meta (shipped defaults) is fitted on the temporal split's training part; for every validation and test
case it keeps the model's scores without the repeat term (the unseen items' top 30 and log-sum-exp, every seen item's
score, recency and count). Each feature family is fitted by maximum likelihood of the validation targets (unit ridge,
L-BFGS) and scored on the test cases (NDCG@10); paired tests against the product's term (the constant prior the
trained model carries) per event with whole owners resampled. ``latest_prior_sweep``: the product's term plus
each candidate of ``scoring.LATEST_PRIORS`` on the latest item, validation and test.

Caveat found with it: the model is fitted on the split's ``train`` part, which CONTAINS the validation period
(``split.valid`` is meant for models fitted on ``valid_train``), so its validation targets are training events
and choices made on them here are not choices on held-out data (docs/evaluation/sasrec.md).

    HRNN_DATA_DIR=D HRNN__TRAIN__THREADS=1 .venv/bin/python -m research.experiments.repeat_features \\
        D/snapshots/58789b8dd0934a20 --seed 0 --output bench/results/repeat_features_yoochoose.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from bisect import bisect_right
from pathlib import Path

import numpy as np
import torch

from hrnn_core.evaluation.harness import ScoreBatch, make_scorer, train_data
from hrnn_core.evaluation.metrics import paired_test
from hrnn_core.evaluation.protocols import build_split
from hrnn_core.evaluation.splits import SnapshotData
from hrnn_core.model.scoring import LATEST_PRIORS

RANKS = (1, 2, 3, 5, 10, 20)  # recency-bucket edges: 0 | 1 | 2 | 3-4 | 5-9 | 10-19 | 20+
FAMILIES = ("product", "one", "recency", "recency+count", "recency+scale", "recency+count+scale", "recency+last_state",
            "recency+item_rate", "recency+count+item_rate")


def recency(history: np.ndarray) -> dict[int, int]:
    """item -> recency bucket in a history (oldest first)."""
    order: dict[int, None] = {}
    for j in reversed(history.tolist()):
        order.setdefault(int(j))
    return {j: bisect_right(RANKS, r) for r, j in enumerate(order)}


def item_repeat_log_odds(train, n_items: int, prior: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per item, from the training sequences ``train`` (a split's training table): the smoothed log odds that
    an event on the item is followed, later in its owner's sequence, by another event on it; and that the very next
    event is on it again. Smoothed toward the overall rates with ``prior`` pseudo-events."""
    seq = train["item_idx"].to_pylist()
    again, nxt, total = (np.zeros(n_items) for _ in range(3))
    for items in seq:
        later: set[int] = set()
        for k in range(len(items) - 1, -1, -1):
            j = items[k]
            if k < len(items) - 1:
                total[j] += 1
                again[j] += j in later
                nxt[j] += items[k + 1] == j
            later.add(j)
    out = []
    for num in (again, nxt):
        rate = (num + prior * num.sum() / max(total.sum(), 1)) / (total + prior)
        out.append(torch.from_numpy(np.log(rate.clip(1e-6, 1 - 1e-6) / (1 - rate.clip(1e-6, 1 - 1e-6)))))
    return out[0], out[1]


def dump(scorer, cases) -> dict[str, torch.Tensor]:
    """Padded per-case tensors: seen scores S (n, L) (-inf padding), buckets, counts, target column y (-1: the
    target is not a seen item), the unseen items' log-sum-exp and top 30, the target's score."""
    rows = []
    for lo in range(0, len(cases), 256):
        idx = np.arange(lo, min(len(cases), lo + 256))
        b = cases.batch(idx)
        batch = ScoreBatch(cases.sequences, b["rows"], b["pos"], b["owners"], b["target_timestamp"],
                           target_event_id=cases.target_event_id[idx])
        h = scorer.request_states(batch)
        s = scorer.scorer.scores(h, b["target_timestamp"]).double()  # no repeat term
        for r, i in enumerate(idx):
            hist = cases.history_items(i)
            rb = recency(hist)
            items = np.array(list(rb), dtype=np.int64)
            t = int(cases.targets(i)[0])
            row = s[r].clone()
            seen = row[items].clone()
            row[items] = float("-inf")
            rows.append((seen, torch.tensor([rb[j] for j in items]), torch.tensor([(hist == j).sum() for j in items]),
                         int(np.flatnonzero(items == t)[0]) if t in rb else -1, torch.logsumexp(row, 0),
                         torch.topk(row, 30).values, s[r, t] if t < s.shape[1] else torch.tensor(-1e9), int(b["owners"][r]),
                         h[r].double(), torch.from_numpy(items)))
    n, width = len(rows), max(1, max(len(r[0]) for r in rows))
    out = {"S": torch.full((n, width), float("-inf"), dtype=torch.float64), "B": torch.zeros(n, width, dtype=torch.long),
           "C": torch.zeros(n, width, dtype=torch.long), "I": torch.zeros(n, width, dtype=torch.long)}
    for i, r in enumerate(rows):
        k = len(r[0])
        out["S"][i, :k], out["B"][i, :k], out["C"][i, :k], out["I"][i, :k] = r[0], r[1], r[2], r[9]
    out.update(y=torch.tensor([r[3] for r in rows]), g0=torch.stack([r[4] for r in rows]),
               top=torch.stack([r[5] for r in rows]), ts=torch.stack([r[6] for r in rows]).double(),
               owner=np.array([r[7] for r in rows]), h=torch.stack([r[8] for r in rows]))
    return out


def features(d: dict, family: str) -> torch.Tensor:
    seen = torch.isfinite(d["S"])
    if family in ("product", "one"):
        f = [seen.double()]
    else:
        f = [(d["B"] == k).double() for k in range(len(RANKS) + 1)]
    if "count" in family:
        f += [(d["C"] >= 2).double(), (d["C"] >= 3).double()]
    if "scale" in family:
        f.append(torch.where(seen, d["S"], torch.zeros_like(d["S"])))
    f = torch.stack(f, -1)
    if "item_rate" in family:
        f = torch.cat([f, torch.stack([d["again"][d["I"]], (d["B"] == 0).double() * d["next"][d["I"]]], -1)], -1)
    if "last_state" in family:  # the state's features on the latest item's cell only
        f = torch.cat([f, (d["B"] == 0).double()[..., None] * d["h"][:, None, :]], -1)
    return f * seen[..., None].double()


def logits(d: dict, f: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(d["S"]), d["S"] + f @ theta, d["S"])


def fit(d: dict, family: str, ridge: float = 1.0) -> torch.Tensor:
    f = features(d, family)
    theta = torch.zeros(f.shape[-1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([theta], max_iter=300, line_search_fn="strong_wolfe")
    y = d["y"]

    def closure():
        opt.zero_grad()
        z = logits(d, f, theta)
        zy = torch.where(y >= 0, z.gather(1, y.clamp(min=0)[:, None]).squeeze(1), d["ts"])
        loss = (torch.logsumexp(torch.cat([d["g0"][:, None], z], 1), 1) - zy).sum() + ridge / 2 * theta.dot(theta)
        loss.backward()
        return loss

    opt.step(closure)
    return theta.detach()


def ndcg10(d: dict, family: str, theta: torch.Tensor) -> np.ndarray:
    z = logits(d, features(d, family), theta)
    y = d["y"]
    t = torch.where(y >= 0, z.gather(1, y.clamp(min=0)[:, None]).squeeze(1), d["ts"])
    above = (d["top"] > t[:, None]).sum(1) + (z > t[:, None]).sum(1)  # the target's own cell is never above itself
    return torch.where(above < 10, 1.0 / torch.log2(above.double() + 2), torch.zeros_like(t)).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("snapshot", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output", type=Path, required=True)
    ap.add_argument("--cache", type=Path, help="keep the fitted model's dumps here (and reuse them when present)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    split = build_split("temporal", SnapshotData.load(args.snapshot), exclude_seen=False)
    if args.cache and args.cache.exists():
        valid, test, product_prior = torch.load(args.cache, weights_only=False)
    else:
        scorer = make_scorer("hrnn", device="cpu")
        with tempfile.TemporaryDirectory(prefix="repeat-features-") as work:
            scorer.fit(train_data(split, "train", args.seed, Path(work)))
            valid, test = dump(scorer, split.valid), dump(scorer, split.test)
            product_prior = float(scorer.scorer.repeat_prior)
            scorer.close()
        if args.cache:
            torch.save((valid, test, product_prior), args.cache)
    again, nxt = item_repeat_log_odds(split.train, split.n_items)
    for d in (valid, test):
        d["again"], d["next"] = again, nxt
    repeats = (test["y"] >= 0).numpy()
    rows, per_event = {}, {}
    for family in FAMILIES:
        theta = torch.tensor([product_prior], dtype=torch.float64) if family == "product" else fit(valid, family)
        v, t = ndcg10(valid, family, theta), ndcg10(test, family, theta)
        per_event[family] = t
        rows[family] = {"theta": [round(x, 4) for x in theta.tolist()], "valid_ndcg@10": float(v.mean()),
                        "test_ndcg@10": float(t.mean()), "test_ndcg@10_repeats": float(t[repeats].mean()),
                        "test_ndcg@10_new": float(t[~repeats].mean())}
    for family in FAMILIES[1:]:
        test_ = paired_test(per_event[family], per_event["product"], clusters=test["owner"])
        rows[family]["test_vs_product"] = {k: float(v) for k, v in test_.items() if isinstance(v, (int, float))}
    # the latest item's prior on top of the product's term (scoring.choose_latest_prior's candidates), both parts
    sweep = {}
    for b in LATEST_PRIORS:
        theta = torch.tensor([product_prior + b] + [product_prior] * len(RANKS), dtype=torch.float64)
        sweep[str(b)] = {"valid_ndcg@10": float(ndcg10(valid, "recency", theta).mean()),
                         "test_ndcg@10": float(ndcg10(test, "recency", theta).mean())}
        print(f"latest +{b}: valid {sweep[str(b)]['valid_ndcg@10']:.4f} test {sweep[str(b)]['test_ndcg@10']:.4f}")
    report = {"snapshot": args.snapshot.name, "latest_prior_sweep": sweep, "protocol": "temporal", "exclude_seen": False, "seed": args.seed,
              "valid_cases": len(valid["y"]), "test_cases": len(repeats), "test_repeats": int(repeats.sum()),
              "families": rows}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1))
    for family, r in rows.items():
        print(f"{family:22s} valid {r['valid_ndcg@10']:.4f} test {r['test_ndcg@10']:.4f} "
              f"repeats {r['test_ndcg@10_repeats']:.4f} new {r['test_ndcg@10_new']:.4f} theta {r['theta'][:10]}")


if __name__ == "__main__":
    main()
