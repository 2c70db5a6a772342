"""The cost of ``model.trend_train`` (the eq. 5 trend term in every dense training score): training
seconds per epoch with the term against the same config without it, in the same run.

Default config otherwise, one torch thread, CPU; the runs alternate (off, on, on, off) so a drift of
the machine's load falls on both. Reports each run's mean seconds per epoch and the ratio on / off.

    .venv/bin/python bench/bench_trend_train.py --snapshot data/snapshots/<id> [--epochs 3] \
        [--out bench/results/trend_train_cost.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import tempfile
from pathlib import Path

import numpy as np
import torch

from hrnn_core.config import ModelConfig, TrainConfig
from hrnn_core.train.trainer import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--snapshot", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = TrainConfig(epochs=args.epochs, min_epochs=0, threads=1, device="cpu", progress=False)
    runs: dict[str, list[float]] = {"off": [], "on": []}
    for mode in ("off", "on", "on", "off"):
        model = dataclasses.replace(ModelConfig(), trend_train=mode == "on")
        with tempfile.TemporaryDirectory(prefix="trend-train-cost-") as tmp:
            res = train(args.snapshot, Path(tmp) / "run", model, cfg)
        runs[mode].append(float(np.mean([h["seconds"] for h in res.history])))
        print(f"trend_train {mode}: {runs[mode][-1]:.2f} s per epoch", flush=True)
    off, on = float(np.mean(runs["off"])), float(np.mean(runs["on"]))
    report = {"snapshot": str(args.snapshot), "epochs": args.epochs, "threads": 1, "machine": platform.machine(),
              "torch": torch.__version__, "seconds_per_epoch": runs, "mean_off": off, "mean_on": on,
              "ratio_on_off": on / off}
    print(f"seconds per epoch: off {off:.2f}, on {on:.2f}; ratio on / off {on / off:.3f}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
