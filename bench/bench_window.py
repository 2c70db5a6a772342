"""Benchmark: this checkout's training loop vs an earlier commit's (issue 18), CPU, one thread.

Usage:
    .venv/bin/python bench/bench_window.py --snapshot SNAPSHOT_DIR [--baseline-rev 0649328] [--hidden 64,128]
        [--epochs 2] [--repeats 2] [--output dense] [--batch-size 32] [--negatives 1024]
        [--out bench/results/window.json]

The baseline is the code at ``--baseline-rev`` (default: the step path, one ``GRUCell`` step per event in
Python, windows where an owner may start mid-row), checked out into a temporary git worktree and run from
there in the same script, alternating with this checkout: each run is ``hrnn_core.train.trainer.train`` in a
fresh child process on the snapshot, ``--output`` softmax (``sampled``: ``--negatives`` shared negatives),
``--batch-size`` owners x bptt 32, ``ModelConfig`` defaults except ``hidden_size`` (and ``input_size`` =
hidden), ``threads=1``. Events/s is the training loop's own (validation and data preparation excluded), the
best of ``--repeats`` runs (the machine may be shared: the best run had the least interference; every run is
recorded).

Roofline, same run, one thread: fp32 ``torch.matmul`` GFLOP/s on the model's own matmul shapes (the
output layer's forward and two backward products, the GRU's input projection over a window and its
recurrent product over one step) and the time-weighted bound they give for the counted FLOPs
(``bench_train.model_flops``: output layer + GRU, forward + backward). The output layer's columns are the
catalogue (dense) or a window's events plus the negatives (sampled).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import REPO, machine, model_flops, run_child  # noqa: E402

CHILD_TRAIN = r"""
import json, sys, time, torch
torch.set_num_threads(1)
from pathlib import Path
from hrnn_core.config import ModelConfig, TrainConfig
from hrnn_core.train.trainer import train
import hrnn_core
snap, run_dir, hidden, epochs = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
output, batch, negatives = sys.argv[5], int(sys.argv[6]), int(sys.argv[7])
res = train(snap, run_dir, ModelConfig(hidden_size=hidden, input_size=hidden),
            TrainConfig(output=output, epochs=epochs, threads=1, device="cpu", progress=False, patience=99,
                        batch_size=batch, n_negatives=negatives))
h = res.history
print(json.dumps({"events": sum(e["events"] for e in h), "seconds": sum(e["seconds"] for e in h),
                  "steps": h[-1]["step"], "ndcg@10": h[-1]["ndcg@10"], "code": hrnn_core.__file__}))
"""

CHILD_ROOFLINE = r"""
import json, sys, time, torch
torch.set_num_threads(1)
rows, hidden, inp, n_items, batch = (int(a) for a in sys.argv[1:6])
def gflops(a, b, min_s=0.4):
    torch.matmul(a, b)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_s:
        torch.matmul(a, b); n += 1
    return 2.0 * a.shape[0] * a.shape[1] * b.shape[1] / ((time.perf_counter() - t0) / n) / 1e9
g = torch.Generator().manual_seed(0)
r = lambda *s: torch.randn(*s, generator=g)
print(json.dumps({
  "output_fwd": gflops(r(rows, hidden), r(hidden, n_items)),
  "output_bwd_h": gflops(r(rows, n_items), r(n_items, hidden)),
  "output_bwd_w": gflops(r(hidden, rows), r(rows, n_items)),
  "gru_input": gflops(r(rows, inp), r(inp, 3 * hidden)),
  "gru_step": gflops(r(batch, hidden), r(hidden, 3 * hidden)),
}))
"""


def roofline(rates: dict, hidden: int, inp: int, n_items: int) -> float:
    """GFLOP/s bound for the counted FLOPs: each product class at its own measured rate (time-weighted)."""
    out, gru_in, gru_h = 2 * hidden * n_items, 2 * 3 * hidden * inp, 2 * 3 * hidden * hidden  # forward, per event
    # forward + 2 backward products each; the output layer's three products measured separately
    secs = (out / rates["output_fwd"] + out / rates["output_bwd_h"] + out / rates["output_bwd_w"]
            + 3 * gru_in / rates["gru_input"] + 3 * gru_h / rates["gru_step"])
    return 3 * (out + gru_in + gru_h) / secs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--snapshot", type=Path, required=True)
    ap.add_argument("--baseline-rev", default="0649328")
    ap.add_argument("--hidden", default="64,128")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--output", choices=["dense", "sampled"], default="dense")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--negatives", type=int, default=1024)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "window.json")
    args = ap.parse_args()
    manifest = json.loads((args.snapshot / "manifest.json").read_text())
    n_items = manifest["n_items"]
    rows = args.batch_size * 32  # a window's events (bptt 32)
    n_out = n_items if args.output == "dense" else rows + args.negatives  # the output layer's columns
    work = Path(tempfile.mkdtemp(prefix="hrnn-bench-window-"))
    base = work / "baseline"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(base), args.baseline_rev], check=True)
    result = {"machine": machine(), "command": " ".join(sys.argv), "baseline_rev": args.baseline_rev,
              "snapshot_id": manifest["snapshot_id"], "n_items": n_items, "n_events": manifest["n_events"],
              "output": args.output, "negatives": args.negatives if args.output == "sampled" else None,
              "batch_size": args.batch_size, "bptt": 32, "threads": 1, "by_hidden": {}}
    try:
        for hidden in [int(h) for h in args.hidden.split(",")]:
            runs: dict[str, list] = {"baseline": [], "current": []}
            for rep in range(args.repeats):
                for path, code_dir in (("baseline", base), ("current", REPO)):
                    run_dir = work / f"{path}-{hidden}-{rep}"
                    res, wall, rss, err = run_child(CHILD_TRAIN, str(args.snapshot), str(run_dir), str(hidden),
                                                    str(args.epochs), args.output, str(args.batch_size),
                                                    str(args.negatives), env_path=code_dir)
                    if res is None:
                        sys.exit(f"{path} H={hidden} failed: {err}")
                    if not res["code"].startswith(str(code_dir)):
                        sys.exit(f"{path} ran {res['code']}, not the code in {code_dir}")
                    res.update(events_per_s=res["events"] / res["seconds"], peak_rss_mb=round(rss))
                    runs[path].append(res)
                    print(f"H={hidden} {path} run {rep}: {res['events_per_s']:,.0f} events/s", flush=True)
            rates, _, _, err = run_child(CHILD_ROOFLINE, str(rows), str(hidden), str(hidden), str(n_out),
                                         str(args.batch_size))
            if rates is None:
                sys.exit(f"roofline failed: {err}")
            bound = roofline(rates, hidden, hidden, n_out)
            flops = model_flops(hidden, hidden, 1, n_out)
            best = {p: max(r["events_per_s"] for r in rs) for p, rs in runs.items()}
            result["by_hidden"][str(hidden)] = {
                "runs": runs, "best_events_per_s": {p: round(v) for p, v in best.items()},
                "speedup_current_over_baseline": round(best["current"] / best["baseline"], 2),
                "roofline_gflop_per_s": {k: round(v, 1) for k, v in rates.items()},
                "roofline_bound_gflop_per_s": round(bound, 1), "flops_per_event": flops,
                "fraction_of_roofline": {p: round(v * flops / 1e9 / bound, 3) for p, v in best.items()},
            }
            print(json.dumps(result["by_hidden"][str(hidden)], indent=1, default=float), flush=True)
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)], check=False)
        shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=float))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
