"""Benchmark + smoke check on a GPU: HRNN-meta training and scoring on CUDA against this machine's CPU.

In one run, on one snapshot (default: ml-100k as ``hrnn evaluate --dataset ml-100k`` exports it):

1. ``hrnn_core.train.trainer.train`` with the default configs on ``cuda`` (bf16 autocast), dense softmax, then
   the importance-sampled softmax (``train.output = "sampled"``), ``--epochs`` each;
2. the same dense training on the CPU (all cores; the baseline of the ratio), ``--cpu-epochs``;
3. the scoring path (``HRNNScorer``, what ``hrnn evaluate`` and the batch export run) of the dense
   CUDA checkpoint on the GPU and on the CPU over the leave_one_out validation cases: the rankings
   must agree (top-10 overlap, max |score difference|).

With ``--large SNAPSHOT`` (a big synthetic catalogue, e.g. ``research.synth.synthetic_snapshot(dir,
n_users=10000, n_items=1000000, n_events=200000, seed=0)``) it runs instead, one epoch each: the
dense softmax over the whole catalogue on the GPU (``max_dense_logits`` raised to allow it), the
importance-sampled softmax on the GPU, and the sampled softmax on the CPU (the dense one over 1M
items is far too slow there): the paper's Table 8 question (dense vs IS at 1M items) on a GPU.

Training events/s are the trainer's own per-epoch counts (``history[i]["events_per_s"]``). The
JSON records the GPU, the CPU, torch and the ratios GPU / CPU. Needs only torch, numpy, pyarrow,
tqdm and matplotlib (no warehouse), so it runs on a bare GPU machine with the snapshot folder.

    python bench/bench_gpu.py --snapshot data/snapshots/<id> --out bench/results/gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hrnn_core.evaluation.baselines.base import ScoreBatch
from hrnn_core.config import ModelConfig, TrainConfig
from hrnn_core.evaluation.harness import score_cases, train_data
from hrnn_core.evaluation.hrnn_scorer import HRNNScorer
from hrnn_core.evaluation.protocols import build_split
from hrnn_core.evaluation.splits import SnapshotData
from hrnn_core.train.trainer import train


def fit(snapshot: Path, device: str, epochs: int, **train_kw) -> dict:
    cfg = TrainConfig(device=device, epochs=epochs, min_epochs=epochs, progress=False, **train_kw)
    run_dir = Path(tempfile.mkdtemp(prefix=f"bench-gpu-{device}-"))
    t = time.perf_counter()
    res = train(snapshot, run_dir, ModelConfig(), cfg)
    wall = time.perf_counter() - t
    hist = res.history
    return {"device": device, "output": cfg.output, "epochs": len(hist), "wall_s": round(wall, 2),
            "events_per_s": [round(h["events_per_s"]) for h in hist],
            "steady_events_per_s": round(float(np.median([h["events_per_s"] for h in hist[1:] or hist]))),
            "val_ndcg@10": [round(h.get("ndcg@10", float("nan")), 4) for h in hist],
            "checkpoint": str(res.best_checkpoint)}


def large(args: argparse.Namespace, gpu: str, report: dict) -> None:
    """Dense vs importance-sampled softmax on a large catalogue, one epoch each (see the module docstring)."""
    snap = args.large
    report["command"] = f"python bench/bench_gpu.py --snapshot {args.snapshot} --large {snap}"
    report["snapshot"] = str(snap)
    runs = {}
    for name, device, kw in [("cuda_sampled", gpu, {"output": "sampled", "n_negatives": args.negatives}),
                             ("cuda_dense", gpu, {"max_dense_logits": 4_000_000_000}),
                             ("cpu_sampled", "cpu", {"output": "sampled", "n_negatives": args.negatives,
                                                     "threads": os.cpu_count() or 1})]:
        try:
            runs[name] = fit(snap, device, 1, **kw)
            runs[name].pop("checkpoint")
        except Exception as exc:  # noqa: BLE001 - a run that cannot fit (memory) is reported, not fatal
            runs[name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        if device != "cpu" and device.startswith("cuda"):
            runs[name]["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            torch.cuda.reset_peak_memory_stats()
        print(name, json.dumps(runs[name]), flush=True)
    report["runs"] = runs
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--snapshot", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=3, help="epochs of each GPU run (the first warms up)")
    ap.add_argument("--cpu-epochs", type=int, default=1)
    ap.add_argument("--negatives", type=int, default=1024, help="negatives of the sampled run")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cuda", help="the accelerator ('cpu' only to dry-run this script)")
    ap.add_argument("--large", type=Path, help="a large-catalogue snapshot: dense vs sampled at that size instead")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark needs a GPU")
    gpu = args.device

    report: dict = {
        "benchmark": "HRNN-meta on CUDA vs this machine's CPU (training events/s, scoring agreement)",
        "command": "python bench/bench_gpu.py --snapshot " + str(args.snapshot) + f" --epochs {args.epochs}",
        "machine": {"gpu": torch.cuda.get_device_name(0) if gpu.startswith("cuda") else "none (dry run)", "cpus": os.cpu_count(), "cpu": platform.processor(),
                    "torch": torch.__version__, "cuda": torch.version.cuda},
        "date": time.strftime("%Y-%m-%d"), "snapshot": str(args.snapshot), "config": "ModelConfig(), TrainConfig() defaults",
    }
    if args.large:
        large(args, gpu, report)
        return
    runs = {
        "cuda_dense": fit(args.snapshot, gpu, args.epochs),
        "cuda_sampled": fit(args.snapshot, gpu, args.epochs, output="sampled", n_negatives=args.negatives),
        "cpu_dense": fit(args.snapshot, "cpu", args.cpu_epochs, threads=os.cpu_count() or 1),
    }
    report["runs"] = runs
    report["gpu_over_cpu_dense"] = round(runs["cuda_dense"]["steady_events_per_s"] / runs["cpu_dense"]["steady_events_per_s"], 2)
    print(json.dumps({k: {kk: v for kk, v in r.items() if kk != "checkpoint"} for k, r in runs.items()}, indent=1), flush=True)

    # scoring: the same checkpoint through HRNNScorer on the GPU and on the CPU
    split = build_split("leave_one_out", SnapshotData.load(args.snapshot))
    with tempfile.TemporaryDirectory(prefix="bench-gpu-score-") as work:
        data = train_data(split, "train", 0, Path(work))
        scores, secs = {}, {}
        for device in (gpu, "cpu"):
            scorer = HRNNScorer(device=device, checkpoint=Path(runs["cuda_dense"]["checkpoint"]))
            scorer.fit(data)  # a pretrained scorer only reads the snapshot
            t = time.perf_counter()
            acc, _ = score_cases(scorer, split.valid, split.n_items)
            secs[device] = time.perf_counter() - t
            b = split.valid.batch(np.arange(len(split.valid)))
            scores[device] = scorer.score(ScoreBatch(split.valid.sequences, b["rows"], b["pos"], b["owners"],
                                                     b["target_timestamp"], split.valid.target_event_id)).float()
            report.setdefault("scoring", {})["cuda" if device == gpu else device] = {"ndcg@10": round(acc.summary()["ndcg@10"], 4),
                                                       "seconds": round(secs[device], 2), "cases": len(split.valid)}
    a, c = scores[gpu], scores["cpu"]
    top_a, top_c = a.topk(10).indices, c.topk(10).indices
    overlap = float(np.mean([len(set(x.tolist()) & set(y.tolist())) / 10 for x, y in zip(top_a, top_c)]))
    report["scoring"]["top10_overlap_cuda_vs_cpu"] = round(overlap, 4)
    report["scoring"]["max_abs_score_diff"] = float((a - c).abs().max())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for r in runs.values():
        r.pop("checkpoint")
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["scoring"], indent=1), f"\nGPU / CPU dense events/s: {report['gpu_over_cpu_dense']}")


if __name__ == "__main__":
    main()
