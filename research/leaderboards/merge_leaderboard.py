"""Replace some models of a leaderboard report with a newer run of the same split.

When a change touches one model only (a new HRNN-meta default), its seeds are re-run with
``hrnn evaluate --models hrnn --seed N --output NEW.json`` and merged into the existing report of
the same dataset, protocol, snapshot and seed: the model's metrics and per-event arrays are
replaced, the paired tests and the chart are recomputed from the per-event arrays, and the report
records what was merged from where (``merged``). The other models' numbers are not touched.

    .venv/bin/python research/leaderboards/merge_leaderboard.py bench/results/leaderboard_ml-100k_temporal.json NEW.json --models hrnn
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import numpy as np

from hrnn_core.evaluation.harness import ModelResult, chart, significance

SAME = ("dataset", "protocol", "protocol_description", "snapshot_id", "n_events")
# lines of a split's description that count something about the split without defining it: a report recorded
# before the line existed is still the same split (the run's own description is kept as protocol_description_now)
INFORMATIONAL = ("test targets that repeat an item of their history",)


def split_description(text: str | None) -> str | None:
    """``text`` without its informational lines (``INFORMATIONAL``): what defines the split."""
    if text is None:
        return None
    return "\n".join(line for line in text.split("\n") if not line.strip().startswith(INFORMATIONAL))


def load(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    report = json.loads(path.read_text())
    with np.load(path.with_suffix(".per_event.npz")) as z:
        arrays = {k: z[k] for k in z.files}
    return report, arrays


def merge(base_path: Path, new_path: Path, models: list[str]) -> dict:
    base, base_arrays = load(base_path)
    new, new_arrays = load(new_path)
    for key in SAME:
        same = (split_description(base.get(key)) == split_description(new.get(key)) if key == "protocol_description"
                else base.get(key) == new.get(key))
        if not same:
            raise SystemExit(f"{new_path} is not the same split as {base_path}: {key} differs "
                             f"({new.get(key)!r} vs {base.get(key)!r})")
    if base.get("protocol_description") != new.get("protocol_description"):
        base["protocol_description_now"] = new.get("protocol_description")
    for name in models:
        if name not in new["models"]:
            raise SystemExit(f"{new_path} has no model {name!r} (it has {', '.join(new['models'])})")
        base["models"][name] = new["models"][name]
        for key in [k for k in base_arrays if k.startswith(f"{name}__")]:
            del base_arrays[key]
        base_arrays.update({k: v for k, v in new_arrays.items() if k.startswith(f"{name}__")})
    results = {}
    for name, metrics in base["models"].items():
        per_event = {k.split("__", 1)[1]: v for k, v in base_arrays.items() if k.split("__", 1)[0] == name}
        results[name] = ModelResult(name, metrics, per_event, metrics.get("fit_seconds", 0.0),
                                    metrics.get("score_seconds", 0.0), [])
    base["significance"] = significance(results)
    base["significance_recall@10"] = significance(results, "recall@10")
    base.setdefault("merged", {}).update({name: {"from": str(new_path), "on": dt.date.today().isoformat()}
                                          for name in models})
    base_path.write_text(json.dumps(base, indent=2, default=float) + "\n")
    np.savez_compressed(base_path.with_suffix(".per_event.npz"), **base_arrays)
    chart(results, base_path.with_suffix(".png"), f"{base['dataset'] or base['snapshot_id']} - {base['protocol']}")
    return base


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base", type=Path, help="the report to update (its .per_event.npz beside it)")
    ap.add_argument("new", type=Path, help="a report of the same split with the re-run models")
    ap.add_argument("--models", default="hrnn", help="comma-separated models to take from NEW")
    args = ap.parse_args()
    for path in (args.base, args.new):
        if not path.is_file() or not path.with_suffix(".per_event.npz").is_file():
            sys.exit(f"{path}: no such report (or no .per_event.npz beside it)")
    report = merge(args.base, args.new, [m for m in args.models.split(",") if m])
    for name, sig in report["significance"].items():
        print(f"{args.base.name}: {name} ndcg@10 {sig['mean_diff']:+.4f} (p={sig['p_value']:.2g})")


if __name__ == "__main__":
    main()
