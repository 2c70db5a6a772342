"""The warm-start settings chosen over several streams' validation days (issue 19; docs/evaluation/warm_start.md).

Reads the reports of ``hrnn-research warm-start-tune`` (one per stream, each with ``--with-full``) and prints, per
variant run on every stream: its pooled validation NDCG@10 on each stream, the difference to that stream's full
retrain with the 95 % interval (whole owners resampled), and the mean over the streams. The rule: the highest
mean validation NDCG@10 over the streams, among the variants run on all of them (one default for every
dataset, as HRNN-meta's and SASRec's own defaults were chosen).

    python research/tuning/warm_start_choice.py bench/results/warm_start_tuning_{ml-100k,yoochoose,synth-drift}.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def choose(reports: dict[str, dict]) -> dict:
    common = set.intersection(*(set(r["variants"]) - {"base", "full"} for r in reports.values()))
    rows = {}
    for name in sorted(common):
        per = {}
        for stream, r in reports.items():
            v = r["variants"][name]
            test = v.get("paired_test_vs_full", {}).get("ndcg@10")
            per[stream] = {"ndcg@10": v["mean_per_event"]["ndcg@10"], "recall@10": v["mean_per_event"]["recall@10"],
                           "vs_full": None if test is None else
                           {k: test[k] for k in ("mean_diff", "ci_low", "ci_high", "p_value")}}
        rows[name] = {"streams": per, "mean_ndcg@10": sum(p["ndcg@10"] for p in per.values()) / len(per)}
    chosen = max(rows, key=lambda k: rows[k]["mean_ndcg@10"])
    return {"rule": "highest mean validation NDCG@10 over the streams, variants run on all of them",
            "full": {s: r["variants"]["full"]["mean_per_event"] for s, r in reports.items() if "full" in r["variants"]},
            "variants": rows, "chosen": chosen,
            "chosen_settings": {k: v for k, v in next(iter(reports.values()))["variants"][chosen].items()
                                if k in ("warm_epochs", "warm_lr_scale", "shrink", "new_event_weight", "min_lr_ratio")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reports", nargs="+", type=Path, help="warm-start-tune reports, one per stream")
    ap.add_argument("--output", type=Path, help="write the table and the choice as JSON")
    args = ap.parse_args()
    reports = {json.loads(p.read_text())["config"].get("dataset", p.stem): json.loads(p.read_text())
               for p in args.reports}
    out = choose(reports)
    streams = list(reports)
    print("variant".ljust(26) + "".join(f"{s:>38}" for s in streams) + "      mean")
    print("full".ljust(26) + "".join(f"{out['full'].get(s, {}).get('ndcg@10', float('nan')):>38.4f}" for s in streams))
    for name, row in sorted(out["variants"].items(), key=lambda kv: -kv[1]["mean_ndcg@10"]):
        cells = []
        for s in streams:
            p = row["streams"][s]
            d = p["vs_full"]
            cells.append(f"{p['ndcg@10']:.4f} ({d['mean_diff']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}])"
                         if d else f"{p['ndcg@10']:.4f}")
        print(name.ljust(26) + "".join(f"{c:>38}" for c in cells) + f"    {row['mean_ndcg@10']:.4f}")
    print(f"chosen: {out['chosen']}")
    if args.output:
        args.output.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
