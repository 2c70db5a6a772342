"""leave_one_out shifted back one event: is the test event (each user's last) unlike the validation one?

Copies a snapshot with every owner's last event removed, so that the ``leave_one_out`` protocol of
the copy tests each user's *second-to-last* event (the real validation event) with exactly the
recipe of the real test (train on the rest, early-stop on the event before it), then runs
``hrnn_core.evaluate.run_evaluation`` on it for the given models. No real test event is read: the
copy does not contain them.

    .venv/bin/python bench/loo_shifted.py data/snapshots/<id> --models hrnn,gru \\
        --output bench/results/leaderboard_ml-100k_leave_one_out_shifted.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from hrnn_core.evaluate import leaderboard, run_evaluation


def shifted_snapshot(src: Path, dst: Path) -> Path:
    """``src`` with each owner's last event dropped (owners need >= 4 events to keep 3)."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("items.parquet", "users.parquet", "item_frequency.parquet"):
        shutil.copy2(src / name, dst / name)
    seq = pq.read_table(src / "sequences.parquet")
    if pc.min(seq["n_events"]).as_py() < 4:
        raise SystemExit(f"{src}: owners with < 4 events would change protocol membership; filter them first")
    cols = {name: (pa.array([v[:-1] for v in seq[name].to_pylist()], seq[name].type)
                   if pa.types.is_list(seq[name].type) else seq[name]) for name in seq.column_names}
    cols["n_events"] = pc.subtract(seq["n_events"], 1)
    pq.write_table(pa.table(cols, schema=seq.schema), dst / "sequences.parquet")
    manifest = json.loads((src / "manifest.json").read_text())
    manifest["snapshot_id"] = f"{manifest['snapshot_id']}-shifted"
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("snapshot", type=Path)
    ap.add_argument("--models", default="hrnn,gru")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--output", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models = [m for m in args.models.split(",") if m]
    train = {"threads": args.threads, "progress": False}
    with tempfile.TemporaryDirectory(prefix="loo-shifted-") as tmp:
        snap = shifted_snapshot(args.snapshot, Path(tmp) / "snapshot")
        report = run_evaluation(snap, "leave_one_out", models, dataset="ml-100k, each owner's last event removed",
                                seed=args.seed, output=args.output, progress=print,
                                model_options={m: {"train": train} for m in models if m in ("hrnn", "gru")})
    print(leaderboard(report.pop("_results")))
    print(json.dumps(report["significance"], indent=1))


if __name__ == "__main__":
    main()
