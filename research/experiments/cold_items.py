"""Issue 21's studies of items with no or few training events.

``breakdown``: a report written by ``hrnn evaluate --output R.json`` (and its ``R.per_event.npz``) split by
cold (no training events) and warm test targets: the same split rebuilt from the snapshot it names, per model
NDCG@10 / Recall@10 / MRR@10 on all, cold-target and warm-target cases, HRNN-meta's paired differences::

    .venv/bin/python -m research.experiments.cold_items R.json --data-dir DIR [--params JSON] [--json OUT]

``--mix SNAPSHOT``: ``model.inference_item_meta_mix`` (eq. 2's lambda at scoring; ``--mixes``) and, with
``--trend-weights``, ``model.trend_weight`` (eq. 5 at scoring) on validation only, split by
cold and warm validation targets: HRNN-meta (the config's defaults) fit on the split's ``valid_train``, the
validation cases scored at each lambda (a scoring-time setting, so one fit serves all); the test set is not
read. Asks whether the metadata side costs the warm targets where an informative category helps the cold ones
(taobao: HGRU ahead on warm test targets, docs/evaluation/hgru.md)::

    .venv/bin/python -m research.experiments.cold_items --mix SNAPSHOT [--mixes 0,0.15] [--trend-weights 0,0.25]
        [--params JSON] [--json OUT]

(Its ``--blend`` sweep of ``model.cold_blend_events`` went with that setting, retired after it gained nothing on
ml-100k and taobao validation; the last version: ``git show 9089f26:research/experiments/cold_items.py``.)
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from hrnn_core.config import load_config
from hrnn_core.evaluation.breakdowns import cold_targets, group_means
from hrnn_core.evaluation.harness import score_cases, train_data
from hrnn_core.evaluation.metrics import paired_test
from hrnn_core.evaluation.protocols import build_split
from hrnn_core.evaluation.splits import SnapshotData
from hrnn_core.model.checkpoint import load_checkpoint
from research.scorers import StudyScorer

METRICS = ("ndcg@10", "recall@10", "mrr@10")


def breakdown(report: dict, per_event: dict[str, np.ndarray], snapshot: Path, params: dict,
              reference: str = "hrnn") -> dict:
    split = build_split(report["protocol"], SnapshotData.load(snapshot), **params)
    cold = cold_targets(split)
    groups = {"all": np.ones(len(cold), dtype=bool), "cold targets": cold, "warm targets": ~cold}
    models = sorted({k.split("__")[0] for k in per_event})
    out: dict = {"snapshot": snapshot.name, "cases": len(cold), "cold_share": float(cold.mean()), "models": {}}
    for m in models:
        arrays = {k: per_event[f"{m}__{k}"] for k in METRICS if f"{m}__{k}" in per_event}
        out["models"][m] = group_means(arrays, groups)
    if reference in models:
        out["paired"] = {}
        for m in models:
            if m == reference:
                continue
            for label, mask in groups.items():
                for k in ("ndcg@10", "recall@10"):
                    a, b = per_event[f"{reference}__{k}"][mask], per_event[f"{m}__{k}"][mask]
                    if len(a):
                        out["paired"][f"{reference}-{m} {label} {k}"] = paired_test(
                            a, b, clusters=split.test.owner[mask])  # by user: a user's events correlate
    return out


def mix_sweep(snapshot: Path, params: dict, mixes=(0.0, 0.05, 0.15, 0.3, 0.5), trend_weights=(), seed: int = 0,
              protocol: str = "temporal") -> dict:
    """One HRNN-meta fit on ``valid_train``; validation NDCG@10 / Recall@10 / MRR@10 at each scoring lambda (at the
    configured trend weight) and at each eq. (5) trend weight (at the configured lambda), on all, cold-target and
    warm-target cases, and each setting's paired difference from the configured one."""
    cfg = load_config()
    split = build_split(protocol, SnapshotData.load(snapshot), **params)
    scorer = StudyScorer(model=cfg.model, train=cfg.train)  # one fit, rescored at each setting
    mix0, trend0 = cfg.model.inference_item_meta_mix, cfg.model.trend_weight
    settings = [("mix", m, m, trend0) for m in mixes] + [("trend_weight", w, mix0, w) for w in trend_weights]
    if (mix0, trend0) not in {(m, t) for _, _, m, t in settings}:
        settings.append(("configured", None, mix0, trend0))  # the reference of the paired tests
    with tempfile.TemporaryDirectory(prefix="hrnn-mix-") as work:
        scorer.fit(train_data(split, "valid_train", seed, Path(work)))
        freq = load_checkpoint(scorer.checkpoint_path).item_freq
        cold = np.asarray(freq)[split.valid.target] == 0  # no event in valid_train
        groups = {"all": np.ones(len(cold), dtype=bool), "cold targets": cold, "warm targets": ~cold}
        out = {"snapshot": snapshot.name, "protocol": protocol, "params": params, "seed": seed,
               "configured": {"mix": mix0, "trend_weight": trend0}, "valid_cases": len(cold),
               "cold_share": float(cold.mean()), "mix": {}, "trend_weight": {}, "paired": {}}
        per_event = {}
        for kind, value, mix, trend in settings:  # the serving path's scoring function at this setting
            scorer.set_inference_mix(mix)
            scorer.trend_weight = trend
            acc, _ = score_cases(scorer, split.valid, split.n_items)
            per_event[(mix, trend)] = {k: acc.per_event(k) for k in METRICS}
            if kind != "configured":
                out[kind][str(value)] = group_means(per_event[(mix, trend)], groups)
                print(kind, value, json.dumps(out[kind][str(value)], default=float), flush=True)
    ref = per_event[(mix0, trend0)]
    for kind, value, mix, trend in (s for s in settings if s[0] != "configured"):
        for label, mask in groups.items():
            for k in ("ndcg@10", "recall@10"):
                out["paired"][f"{kind} {value} - configured {label} {k}"] = paired_test(
                    per_event[(mix, trend)][k][mask], ref[k][mask], clusters=split.valid.owner[mask])
    return out


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, nargs="?")
    parser.add_argument("--mix", type=Path, default=None, help="snapshot folder: the scoring-time sweep")
    parser.add_argument("--mixes", default="0,0.05,0.15,0.3,0.5", help="--mix: lambdas to score at")
    parser.add_argument("--trend-weights", default="", help="--mix: eq. (5) trend weights to score at (default: none)")
    parser.add_argument("--data-dir", type=Path, help="the data dir the evaluation ran in")
    parser.add_argument("--params", default="{}", help="the protocol parameters the evaluation was given (JSON)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.mix is not None:
        result = mix_sweep(args.mix, json.loads(args.params), _floats(args.mixes), _floats(args.trend_weights))
        print(json.dumps(result, indent=1, default=float))
        if args.json:
            args.json.write_text(json.dumps(result, indent=1, default=float) + "\n")
        return
    if args.report is None:
        parser.error("give a report, or --mix SNAPSHOT")
    report = json.loads(args.report.read_text())
    npz = np.load(args.report.with_suffix(".per_event.npz"))
    snapshot = args.data_dir / "snapshots" / report["snapshot_id"]
    result = breakdown(report, {k: npz[k] for k in npz.files}, snapshot, json.loads(args.params))
    print(json.dumps(result, indent=1, default=float))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()
