"""Benchmark: training on a busy machine, torch's default thread count vs the project's policy (issue 18).

Usage:
    python bench/bench_busy.py --snapshot DATA_DIR/snapshots/ID [--epochs 1] [--repeats 1] [--out bench/results/busy.json]

    (an ml-100k snapshot: ``HRNN_DATA_DIR=DIR hrnn datasets fetch ml-100k && hrnn ingest --dataset ml-100k &&
    hrnn transform && hrnn snapshot``)

Each run is a fresh child process that trains HRNN-meta (``hrnn_core.train.trainer.train``, default
ModelConfig, dense output, ``--epochs`` epochs, 100 validation owners) on the snapshot, once alone and once
beside a one-thread CPU burner (a child process spinning ``while True: pass``, started 0.5 s before the run
and killed after it), for two thread settings:

- ``torch_default``: torch's own thread count (one per physical core), what ``train.threads = 0`` meant
  before the policy (``train.threads`` is set to the count a fresh torch process reports);
- ``policy``: ``train.threads = 0``, the automatic choice of ``hrnn_core.threads``.

Reported per run: the training loop's seconds (the sum of the epochs' ``seconds``, no data preparation or
validation), events/s and the thread count used; per setting the ratio busy / alone (target for the policy:
<= 1.5). The 1-minute load average is recorded before and after every run: on a shared machine other jobs
are part of "alone".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, tempfile
from pathlib import Path
import torch
from hrnn_core.config import ModelConfig, TrainConfig
from hrnn_core.train.trainer import train
snap, setting, epochs = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
threads = torch.get_num_threads() if setting == "torch_default" else 0  # fresh process: torch's default
cfg = TrainConfig(epochs=epochs, min_epochs=0, val_owners=100, progress=False, device="cpu", threads=threads)
with tempfile.TemporaryDirectory() as d:
    res = train(snap, Path(d) / "run", ModelConfig(), cfg)
seconds = sum(h["seconds"] for h in res.history)
events = sum(h["events_per_s"] * h["seconds"] for h in res.history)
print(json.dumps({"threads": torch.get_num_threads(), "train_loop_s": seconds, "events_per_s": events / seconds}))
"""

BURNER = "while True: pass"


def one_run(snapshot: Path, setting: str, epochs: int, busy: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    burner = subprocess.Popen([sys.executable, "-c", BURNER]) if busy else None
    try:
        if burner is not None:
            time.sleep(0.5)  # spinning before the run starts
        load_before = os.getloadavg()[0]
        out = subprocess.run([sys.executable, "-c", CHILD, str(snapshot), setting, str(epochs)], env=env,
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"{setting} run failed:\n{out.stderr[-3000:]}")
        result = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        if burner is not None:
            burner.kill()
            burner.wait()
    return {**result, "busy": busy, "load_avg_1min_before": round(load_before, 2),
            "load_avg_1min_after": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--snapshot", type=Path, required=True, help="an ml-100k snapshot folder (see the module docstring)")
    ap.add_argument("--epochs", type=int, default=1, help="training epochs per run (ml-100k: ~100k events each)")
    ap.add_argument("--repeats", type=int, default=1, help="alone/busy pairs per setting (the median ratio is reported)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "busy.json")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda sig, _: sys.exit(128 + sig))  # stopped: children killed, no burner left
    if not (args.snapshot / "manifest.json").exists():
        ap.error(f"--snapshot {args.snapshot}: not a snapshot folder (no manifest.json); see the module docstring")
    if args.epochs < 1 or args.repeats < 1:
        ap.error("--epochs and --repeats must be >= 1")

    started = time.time()
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    runs: dict[str, list[dict]] = {}
    ratios: dict[str, list[float]] = {}
    for rep in range(args.repeats):
        for setting in ("torch_default", "policy"):
            alone = one_run(args.snapshot, setting, args.epochs, busy=False)
            busy = one_run(args.snapshot, setting, args.epochs, busy=True)
            runs.setdefault(setting, []).extend([alone, busy])
            ratios.setdefault(setting, []).append(busy["train_loop_s"] / alone["train_loop_s"])
            print(f"[{rep + 1}/{args.repeats}] {setting:<14} threads {alone['threads']}/{busy['threads']}  "
                  f"alone {alone['train_loop_s']:6.1f} s ({alone['events_per_s']:7.0f} ev/s)  "
                  f"busy {busy['train_loop_s']:6.1f} s ({busy['events_per_s']:7.0f} ev/s)  "
                  f"busy/alone {ratios[setting][-1]:.2f}", flush=True)
    summary = {s: round(sorted(r)[len(r) // 2], 3) for s, r in ratios.items()}
    report = {
        "benchmark": "HRNN-meta training alone vs beside a one-thread CPU burner: torch's default threads vs "
                     "hrnn_core.threads' policy (issue 18)",
        "command": "python bench/bench_busy.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
                    "cpu": platform.processor() or platform.machine(), "platform": platform.platform(),
                    "python": platform.python_version(), "torch": _torch_version()},
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "load_avg_at_start": load_at_start,
        "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
        "snapshot": str(args.snapshot),
        "config": {"model": "ModelConfig() defaults (dense, H = 64)", "epochs": args.epochs, "val_owners": 100},
        "busy_over_alone": summary,
        "busy_over_alone_all": {s: [round(x, 3) for x in r] for s, r in ratios.items()},
        "target_policy_busy_over_alone": 1.5,
        "runs": runs,
        "seconds": round(time.time() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"busy/alone: torch default {summary['torch_default']:.2f}, policy {summary['policy']:.2f} "
          f"(target <= 1.5); load average at start {load_at_start}; wrote {args.out}")
    return 0


def _torch_version() -> str:
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True)
    return out.stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
