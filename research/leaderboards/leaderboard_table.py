"""Markdown tables from the leaderboard JSONs of research/leaderboards/leaderboards.sh (docs/evaluation/leaderboards.md).

    .venv/bin/python research/leaderboards/leaderboard_table.py bench/results/leaderboard_<dataset>_<protocol>.json ...  (not the .seedN files)
    .venv/bin/python research/leaderboards/leaderboard_table.py bench/results/leaderboard_<dataset>_<protocol>.seed_mean.json   (seed tables)
    (also the ``.seed_mean_<model>.json`` files of a model added over fewer seeds: sasrec)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def table(report: dict) -> str:
    models = report["models"]
    lines = [f"### {report['dataset']} / {report['protocol']}",
             "", f"{report['n_events']:,} test events, {report['n_users']:,} users. "
                 f"{report.get('protocol_description', '').splitlines()[0] if report.get('protocol_description') else ''}",
             "", "| model | NDCG@10 | Recall@10 | MRR@10 | PPL | fit s (shared 2-core CPU, context only) | epochs (best) |",
             "|---|---|---|---|---|---|---|"]
    for name, m in sorted(models.items(), key=lambda kv: -kv[1].get("ndcg@10", 0.0)):
        ppl = f"{m['ppl']:.1f}" if isinstance(m.get("ppl"), float) else "-"
        epochs = f"{m['epochs_run']} ({m['best_epoch']})" if "epochs_run" in m else "-"
        lines.append(f"| {name} | {m['ndcg@10']:.4f} | {m['recall@10']:.4f} | {m['mrr@10']:.4f} | {ppl} | "
                     f"{m.get('fit_seconds', 0):.1f} | {epochs} |")
    lines += ["", "Paired tests, HRNN-meta minus each model (per-event bootstrap 95% CI, paired t-test p):", "",
              "| vs | NDCG@10 diff | CI | p | Recall@10 diff | CI | p |", "|---|---|---|---|---|---|---|"]
    rec = report.get("significance_recall@10", {})
    for pair, t in report.get("significance", {}).items():
        r = rec.get(pair, {})
        cells = [f"{t['mean_diff']:+.4f}", f"{t['ci_low']:+.4f}..{t['ci_high']:+.4f}", f"{t['p_value']:.2g}"]
        cells += ([f"{r['mean_diff']:+.4f}", f"{r['ci_low']:+.4f}..{r['ci_high']:+.4f}", f"{r['p_value']:.2g}"]
                  if r else ["-"] * 3)
        lines.append(f"| {pair.split('_vs_')[1]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seed_table(report: dict) -> str:
    """Per-seed and seed-mean NDCG@10 / Recall@10, then the paired tests on seed-mean per-event values."""
    per, mean = report["per_run"], report["seed_mean"]
    n = report["n_runs"]
    seeds = " / ".join(str(i) for i in range(n))
    lines = [f"| model | NDCG@10 seeds {seeds} | mean | Recall@10 seeds {seeds} | mean |", "|---|---|---|---|---|"]
    for name in sorted(per, key=lambda m: -mean[m]["ndcg@10"]):
        cells = [" / ".join(f"{v:.4f}" for v in per[name][k]) + f" | {mean[name][k]:.4f}" for k in ("ndcg@10", "recall@10")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "| HRNN-meta minus | NDCG@10 diff | CI | p | Recall@10 diff | CI | p |", "|---|---|---|---|---|---|---|"]
    rivals = sorted({key.split("__")[0].split("_vs_")[1] for key in report["tests"]})
    for rival in rivals:
        for tests, label in ((report["tests"], rival), (report.get("tests_by_owner"), f"{rival}, whole users resampled")):
            if not tests:
                continue
            cells = []
            for k in ("ndcg@10", "recall@10"):
                t = tests[f"hrnn_vs_{rival}__{k}"]
                cells += [f"{t['mean_diff']:+.4f}", f"{t['ci_low']:+.4f}..{t['ci_high']:+.4f}", f"{t['p_value']:.2g}"]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    paths = sys.argv[1:]
    if not paths or paths[0] in ("-h", "--help"):
        sys.exit(__doc__)
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        sys.exit(f"no such report: {', '.join(missing)} (research/leaderboards/leaderboards.sh writes them)")
    for path in paths:
        report = json.loads(Path(path).read_text())
        print(seed_table(report) if ".seed_mean" in Path(path).name else table(report))
        print()
