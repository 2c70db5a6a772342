"""Issue 21's studies of items with no or few training events.

``breakdown``: a report written by ``hrnn evaluate --output R.json`` (and its ``R.per_event.npz``) split by
cold (no training events) and warm test targets: the same split rebuilt from the snapshot it names, per model
NDCG@10 / Recall@10 / MRR@10 on all, cold-target and warm-target cases, HRNN-meta's paired differences::

    .venv/bin/python -m research.experiments.cold_items R.json --data-dir DIR [--params JSON] [--json OUT]

``--blend SNAPSHOT``: ``model.cold_blend_events`` (k) chosen on validation only: HRNN-meta (the config's
defaults) fit on the split's ``valid_train``, the validation cases scored at each k (a scoring-time setting,
so one fit serves every k); the test set is not read::

    .venv/bin/python -m research.experiments.cold_items --blend SNAPSHOT [--protocol temporal] [--params JSON]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np

from hrnn_core.config import load_config
from hrnn_core.evaluation.breakdowns import cold_targets, group_means
from hrnn_core.evaluation.harness import make_scorer, score_cases, train_data
from hrnn_core.evaluation.metrics import paired_test
from hrnn_core.evaluation.protocols import build_split
from hrnn_core.evaluation.splits import SnapshotData
from hrnn_core.model.checkpoint import load_checkpoint
from hrnn_core.model.scoring import CatalogueScorer

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


def blend_sweep(snapshot: Path, protocol: str, params: dict, ks=(0.0, 1.0, 3.0, 10.0, 30.0), seed: int = 0) -> dict:
    """Validation NDCG@10 / Recall@10 of one HRNN-meta fit on ``valid_train`` at each ``cold_blend_events``."""
    cfg = load_config()
    split = build_split(protocol, SnapshotData.load(snapshot), **params)
    scorer = make_scorer("hrnn", model=cfg.model, train=cfg.train)
    with tempfile.TemporaryDirectory(prefix="hrnn-blend-") as work:
        scorer.fit(train_data(split, "valid_train", seed, Path(work)))
        freq = load_checkpoint(scorer.checkpoint_path).item_freq
        out = {"snapshot": snapshot.name, "protocol": protocol, "params": params, "valid_cases": len(split.valid),
               "few_event_items": {f"<= {n}": int(((freq > 0) & (freq <= n)).sum()) for n in (1, 3, 10)}, "k": {}}
        for k in ks:
            scorer.model.cfg = dataclasses.replace(scorer.model.cfg, cold_blend_events=float(k))
            scorer.scorer = CatalogueScorer(scorer.model, freq)  # the serving path's scorer at this k
            scorer._trend_key = None
            acc, _ = score_cases(scorer, split.valid, split.n_items)
            s = acc.summary()
            out["k"][str(k)] = {m: s[m] for m in ("ndcg@10", "recall@10")}
            print(k, out["k"][str(k)], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, nargs="?")
    parser.add_argument("--data-dir", type=Path, help="the data dir the evaluation ran in")
    parser.add_argument("--blend", type=Path, default=None, help="snapshot folder: the cold_blend_events sweep")
    parser.add_argument("--protocol", default="temporal")
    parser.add_argument("--params", default="{}", help="the protocol parameters the evaluation was given (JSON)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.blend is not None:
        result = blend_sweep(args.blend, args.protocol, json.loads(args.params))
        if args.json:
            args.json.write_text(json.dumps(result, indent=1) + "\n")
        return
    report = json.loads(args.report.read_text())
    npz = np.load(args.report.with_suffix(".per_event.npz"))
    snapshot = args.data_dir / "snapshots" / report["snapshot_id"]
    result = breakdown(report, {k: npz[k] for k in npz.files}, snapshot, json.loads(args.params))
    print(json.dumps(result, indent=1, default=float))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()
