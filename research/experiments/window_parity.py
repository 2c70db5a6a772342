"""Accuracy of the window path against the step path it replaced (issue 18): paired tests on seed means.

Each version ran ``hrnn evaluate --dataset ml-100k --protocol P --models hrnn --seed S --output DIR/V_P_sS.json``
(V = ``new`` from this checkout, ``old`` from a worktree of the step-path commit, e.g. 0649328, with
``PYTHONPATH`` set to it); the evaluation cases of one protocol and seed are the same in both. This averages
each version's per-event arrays (``.per_event.npz``) over the seeds and runs ``metrics.paired_test`` of new
against old per protocol, and prints each seed's own numbers.

    .venv/bin/python research/experiments/window_parity.py DIR --seeds 0,1 [--output FILE.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from hrnn_core.evaluation.metrics import paired_test

METRICS = ("ndcg@10", "recall@10")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--protocols", default="leave_one_out,temporal")
    ap.add_argument("--output", type=Path)
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    out: dict = {}
    for proto in args.protocols.split(","):
        per: dict[str, dict[str, list]] = {v: {m: [] for m in METRICS} for v in ("old", "new")}
        runs: dict[str, list] = {"old": [], "new": []}
        for v in ("old", "new"):
            for s in seeds:
                base = args.folder / f"{v}_{proto}_s{s}"
                arrays = np.load(base.with_suffix(".per_event.npz"))
                model = json.loads(base.with_suffix(".json").read_text())["models"]["hrnn"]
                runs[v].append({k: model[k] for k in ("ndcg@10", "recall@10", "epochs_run", "best_epoch",
                                                      "fit_seconds", "score_seconds")})
                for m in METRICS:
                    per[v][m].append(arrays[f"hrnn__{m}"])
        tests = {m: paired_test(np.mean(per["new"][m], axis=0), np.mean(per["old"][m], axis=0)) for m in METRICS}
        means = {v: {m: float(np.mean(per[v][m])) for m in METRICS} for v in ("old", "new")}
        out[proto] = {"seeds": seeds, "runs": runs, "seed_means": means, "new_vs_old": tests}
        print(f"{proto}: " + "  ".join(
            f"{m} old {means['old'][m]:.4f} new {means['new'][m]:.4f} diff {tests[m]['mean_diff']:+.4f} "
            f"CI {tests[m]['ci_low']:+.4f}..{tests[m]['ci_high']:+.4f} p {tests[m]['p_value']:.2g}" for m in METRICS))
        for v in ("old", "new"):
            print(f"  {v}: " + "; ".join(f"seed {s} {r['ndcg@10']:.4f} / {r['recall@10']:.4f} ({r['epochs_run']} epochs, "
                                        f"fit {r['fit_seconds']:.0f} s, score {r['score_seconds']:.1f} s)"
                                        for s, r in zip(seeds, runs[v], strict=True)))
    if args.output is not None:
        args.output.write_text(json.dumps(out, indent=2, default=float))


if __name__ == "__main__":
    main()
