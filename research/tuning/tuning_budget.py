"""The tuning budgets of HRNN-meta and SASRec, summed from the tuning reports (docs/evaluation/sasrec.md).

Fit seconds of every run in each report (the machine was shared, so seconds are context; the counts are exact),
per report and per model, plus SASRec's two capped first-round fits (``earlier_capped_runs``: epochs x seconds
per epoch, or the 480-s cap).

    .venv/bin/python research/tuning/tuning_budget.py
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"
REPORTS = {
    "HRNN-meta": ["tune_hrnn.json", "tune_hrnn_trend.json", "tune_hrnn_ml-latest-small.json", "tune_hrnn_yoochoose.json",
                  "tune_hrnn_yoochoose_trend.json"],
    "SASRec": ["tune_sasrec.json", "tune_sasrec_yoochoose.json", "tune_sasrec_ml-latest-small.json"],
}


def capped_seconds(report: dict) -> float:
    """The first round's capped fits, which were never scored (no ``fit_seconds`` of their own)."""
    return sum(r["epochs_run"] * r["seconds_per_epoch"] if r["config"] == "base" else 480.0
               for r in report.get("earlier_capped_runs", []))


def main() -> None:
    totals = {}
    for model, files in REPORTS.items():
        fits, seconds = 0, 0.0
        for name in files:
            report = json.loads((RESULTS / name).read_text())
            s = sum(r.get("fit_seconds") or 0.0 for r in report["runs"]) + capped_seconds(report)
            print(f"{model:<10} {name:<34} {len(report['runs']):>4} fits {s:>9,.0f} s")
            fits, seconds = fits + len(report["runs"]), seconds + s
        totals[model] = seconds
        print(f"{model:<10} {'total':<34} {fits:>4} fits {seconds:>9,.0f} s")
    print(f"SASRec / HRNN-meta: {totals['SASRec'] / totals['HRNN-meta']:.0%}")


if __name__ == "__main__":
    main()
