"""Benchmark: training throughput (with this machine's matmul roofline) and dense vs
importance-sampled softmax on synthetic catalogs (issue 3; paper 3.1, 4.6 / Table 8).

Usage:
    .venv/bin/python bench/bench_train.py [--ml100k SNAPSHOT] [--workdir /tmp/hrnn-bench-train]
        [--sizes 10000,100000,1000000] [--events 10000=200000,100000=200000,1000000=300000]
        [--users 5000] [--is-epochs 1] [--dense-max-logits 400000000] [--dense-probe-events 4000]
        [--only throughput|is]

Part 1 (bench/results/train_throughput.json): ``hrnn_core.train.trainer.train`` on the ml-100k snapshot,
dense softmax, default ModelConfig, 2 epochs, threads = 2 and threads = 1; in the same run, the
roofline of this machine: fp32 ``torch.matmul`` GFLOP/s for the dense output layer's shapes
(forward (B*T, H) x (H, n_items) and the two backward products) and a 2048^3 square product.
Achieved model FLOP/s counts only the output layer and the GRU (formula in ``model_flops``).

Part 2 (bench/results/is_vs_dense.json): for each synthetic catalog (``research.synth.synthetic_snapshot``,
``research.synth`` seed 0) one training run per output ("dense", and "sampled" with
n_negatives 1024), each in a fresh child process (peak RSS = that child's ``wait4`` ru_maxrss).
Accuracy: the trainer's own held-out events (the last event of ``val_owners`` owners, never
trained on), ranked against the full catalog; the child re-scores them one by one from
``last.pt`` to get per-event NDCG@10 for ``metrics.paired_test`` (IS vs dense).
A dense run whose batch x items logits exceed ``--dense-max-logits`` is not trained on the full
data: it is probed on a snapshot with the same catalog and only ``--dense-probe-events`` events
(events/s and peak RSS only; its accuracy is reported as skipped), when the probe's estimated
memory fits this machine; otherwise it is skipped with the memory it would need.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ML100K = Path("/tmp/rtdata/snapshots/0ee567045d037736")

CHILD_TRAIN = r"""
import json, sys, time, math
from pathlib import Path
import numpy as np, torch
from hrnn_core.config import ModelConfig, TrainConfig
from hrnn_core.train.trainer import train, prepare_data, evaluate
from hrnn_core.model.checkpoint import load_checkpoint
from hrnn_core.model.scoring import CatalogueScorer
snap, run_dir, cfg_json, per_event = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4] == "1"
model_cfg, cfg = ModelConfig(), TrainConfig(**cfg_json)
t = time.perf_counter()
res = train(snap, run_dir, model_cfg, cfg)
out = {"train_wall_s": time.perf_counter() - t, "history": res.history}
if per_event:
    # Per-event metrics of the same held-out events the trainer validated on (full-catalog
    # ranking), one event at a time, from the last epoch's weights: input to paired_test.
    data = prepare_data(snap, model_cfg, cfg)
    model = load_checkpoint(res.last_checkpoint, torch.device("cpu")).model.eval()
    scorer = CatalogueScorer(model, data.events.item_freq, mix=model_cfg.inference_item_meta_mix)  # eq. 2, no trend term
    ndcg, ce = [], []
    for seg in data.val_segments:
        m = evaluate(model, data, seg[None, :], torch.device("cpu"), scorer=scorer)
        ndcg.append(m["ndcg@10"]); ce.append(m["val_loss"])
    out["per_event_ndcg@10"], out["per_event_ce"] = ndcg, ce
print(json.dumps(out, default=float))
"""

CHILD_ROOFLINE = r"""
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
n_rows, hidden, n_items = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def gflops(a, b, reps_min_s=0.5):
    torch.matmul(a, b)  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < reps_min_s:
        torch.matmul(a, b); n += 1
    s = (time.perf_counter() - t0) / n
    return 2.0 * a.shape[0] * a.shape[1] * b.shape[1] / s / 1e9
g = torch.Generator().manual_seed(0)
h, w, gs = (torch.randn(n_rows, hidden, generator=g), torch.randn(hidden, n_items, generator=g),
            torch.randn(n_rows, n_items, generator=g))
sq = torch.randn(2048, 2048, generator=g)
out = {
  "output_fwd (BT,H)x(H,n)": gflops(h, w),
  "output_bwd_h (BT,n)x(n,H)": gflops(gs, w.T.contiguous()),
  "output_bwd_w (H,BT)x(BT,n)": gflops(h.T.contiguous(), gs),
  "square 2048^3": gflops(sq, sq, 1.0),
}
print(json.dumps(out))
"""


def run_child(code: str, *args: str, max_address_gb: float | None = None, env_path: Path | None = None
              ) -> tuple[dict | None, float, float, str]:
    """Run ``code`` in a fresh interpreter: (its JSON output or None, wall s, its peak RSS MB, stderr tail).

    ``env_path``: a checkout whose ``hrnn_core`` the child imports (first on PYTHONPATH, its cwd), e.g. a
    worktree of an earlier commit for a before/after comparison in one run.

    ``max_address_gb`` caps the child's address space (RLIMIT_AS) so that a run too large for the
    shared machine fails with an allocation error instead of pushing other jobs out of memory.
    """
    def limit() -> None:
        if max_address_gb is not None:
            import resource  # noqa: PLC0415

            cap = int(max_address_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t = time.perf_counter()
        env = dict(os.environ, PYTHONPATH=str(env_path)) if env_path is not None else None
        proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=out, stderr=err, cwd=env_path or REPO,
                                preexec_fn=limit, env=env)
        _, status, usage = os.wait4(proc.pid, 0)  # rusage of this child alone
        code_ = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t
        out.seek(0)
        err.seek(0)
        if code_ != 0:
            return None, wall, usage.ru_maxrss / 1024, f"exit {code_}: {err.read()[-2000:]}"
        return json.loads(out.read().strip().splitlines()[-1]), wall, usage.ru_maxrss / 1024, ""


def model_flops(hidden: int, input_size: int, layers: int, n_out: int) -> float:
    """Training FLOPs per event counted: output layer + GRU, forward and backward (= 3 x forward).

    output layer: scores h (1 x H) . W (H x n_out): 2 H n_out forward;
    GRU (per layer): 3 gates of (x W_i + h W_h): 2 * 3 H (I + H) forward (I = H above layer 1).
    Input field MLPs, embeddings, softmax and the optimizer are not counted.
    """
    gru = sum(2 * 3 * hidden * ((input_size if i == 0 else hidden) + hidden) for i in range(layers))
    return 3.0 * (2 * hidden * n_out + gru)


def machine() -> dict:
    import torch  # noqa: PLC0415

    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    return {"cpus": os.cpu_count(), "cpu": cpu, "ram_gb": round(mem_gb, 1), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "load_avg_at_start": [round(x, 2) for x in os.getloadavg()]}


# ------------------------------------------------------------------ part 1: throughput


def throughput(args, work: Path) -> dict:
    from hrnn_core.config import ModelConfig, TrainConfig  # noqa: PLC0415

    mc, tc = ModelConfig(), TrainConfig()
    manifest = json.loads((args.ml100k / "manifest.json").read_text())
    n_items = manifest["n_items"]
    runs, roof = {}, {}
    for threads in (2, 1):
        roof[threads], _, _, err = run_child(CHILD_ROOFLINE, str(threads), str(tc.batch_size * tc.bptt),
                                             str(mc.hidden_size), str(n_items))
        if roof[threads] is None:
            sys.exit(f"roofline failed: {err}")
        run_dir = work / f"ml100k-dense-t{threads}"
        shutil.rmtree(run_dir, ignore_errors=True)
        cfg = {"output": "dense", "epochs": args.epochs, "threads": threads, "device": "cpu", "progress": False}
        res, wall, rss, err = run_child(CHILD_TRAIN, str(args.ml100k), str(run_dir), json.dumps(cfg), "0")
        if res is None:
            sys.exit(f"training failed: {err}")
        hist = res["history"]
        events, seconds = sum(h["events"] for h in hist), sum(h["seconds"] for h in hist)
        eps = events / seconds
        flops_ev = model_flops(mc.hidden_size, mc.input_size, mc.num_layers, n_items)
        achieved = eps * flops_ev / 1e9
        fwd = roof[threads]["output_fwd (BT,H)x(H,n)"]
        runs[f"threads={threads}"] = {
            "events_per_s": round(eps), "events": events, "train_loop_s": round(seconds, 2),
            "per_epoch_events_per_s": [round(h["events_per_s"]) for h in hist],
            "wall_s_with_data_and_validation": round(res["train_wall_s"], 2), "peak_rss_mb": round(rss),
            "val_ppl": round(hist[-1]["val_ppl"], 2), "ndcg@10": round(hist[-1]["ndcg@10"], 4),
            "model_gflop_per_s": round(achieved, 2),
            "roofline_gflop_per_s": {k: round(v, 1) for k, v in roof[threads].items()},
            "fraction_of_output_shape_roofline": round(achieved / fwd, 4),
            "fraction_of_square_roofline": round(achieved / roof[threads]["square 2048^3"], 4),
            # what the output layer alone could do at the output-shape roofline (fwd+bwd mean)
            "output_layer_bound_events_per_s": round(
                sum(roof[threads][k] for k in list(roof[threads])[:3]) / 3 * 1e9 / (6 * mc.hidden_size * n_items)),
        }
    return {
        "data": {"snapshot": str(args.ml100k), "snapshot_id": manifest["snapshot_id"], "n_items": n_items,
                 "n_events": manifest["n_events"], "n_owners": manifest["n_owners"]},
        "config": {"model": "ModelConfig() defaults", "hidden_size": mc.hidden_size, "input_size": mc.input_size,
                   "num_layers": mc.num_layers, "output": "dense", "epochs": args.epochs,
                   "batch_size": tc.batch_size, "bptt": tc.bptt, "device": "cpu"},
        "flops_per_event": model_flops(mc.hidden_size, mc.input_size, mc.num_layers, n_items),
        "flops_formula": "3 x (2 H n_items + 6 H (I + H) per GRU layer): output layer + GRU, forward + backward "
                         "(backward = 2 x forward); field MLPs, embeddings, softmax, optimizer not counted",
        "runs": runs,
    }


# ------------------------------------------------------------------ part 2: dense vs IS


def is_vs_dense(args, work: Path) -> tuple[dict, dict]:
    from hrnn_core.config import TrainConfig  # noqa: PLC0415
    from hrnn_core.evaluation.metrics import paired_test  # noqa: PLC0415
    from research.synth import synthetic_snapshot  # noqa: PLC0415

    tc = TrainConfig()
    bt = tc.batch_size * tc.bptt
    results: dict = {}
    meta: dict = {"per_size": {}}
    ram_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    for n_items in args.sizes:
        n_events = args.events.get(n_items, 200_000)
        users = min(args.users, n_events // 10)
        snap_kw = dict(n_users=users, n_items=n_items, n_events=n_events, seed=0)
        t = time.perf_counter()
        snap = synthetic_snapshot(work / f"synth-{n_items}-{n_events}-{users}", **snap_kw)
        snap_s = time.perf_counter() - t
        row: dict = {}
        info: dict = {"data": {"generator": "research.synth", **snap_kw, "snapshot": str(snap),
                               "snapshot_build_s": round(snap_s, 1)}}
        per_event = {}
        for label, output in (("dense", "dense"), ("is", "sampled")):
            cfg = {"output": output, "n_negatives": args.negatives, "epochs": args.is_epochs, "threads": args.threads,
                   "device": "cpu", "progress": False, "val_owners": args.val_owners,
                   "max_dense_logits": max(tc.max_dense_logits, bt * n_items)}
            snap_used, probe = snap, False
            if output == "dense" and bt * n_items > args.dense_max_logits:
                # 3 fp32 (B*T, n_items) buffers at least: scores, log-softmax, their gradient
                need_gb = 3 * 4 * bt * n_items / 2**30
                if need_gb * 1024 > 0.9 * ram_mb or args.dense_probe_events <= 0:
                    row[label] = {"skipped": f"batch x items = {bt:,} x {n_items:,} = {bt * n_items:,} logits exceeds "
                                             f"{args.dense_max_logits:,}; would need >= {need_gb:.1f} GB "
                                             f"(3 fp32 logit-sized buffers)"}
                    print(f"{n_items:>9,} {label:<6} skipped", flush=True)
                    continue
                probe_kw = dict(snap_kw, n_events=args.dense_probe_events, n_users=args.dense_probe_events // 20)
                snap_used = synthetic_snapshot(work / f"synth-{n_items}-probe-{args.dense_probe_events}", **probe_kw)
                cfg["val_owners"] = min(args.val_owners, 100)
                probe = True
                info["dense_probe_data"] = {"generator": "research.synth", **probe_kw}
            run_dir = work / f"run-{n_items}-{label}"
            shutil.rmtree(run_dir, ignore_errors=True)
            print(f"{n_items:>9,} {label:<6} training{' (probe)' if probe else ''} ...", flush=True)
            cap = None
            if probe:  # never more than 70% of the memory available now
                avail = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
                             if ln.startswith("MemAvailable")) / 2**20
                cap = 0.7 * avail + 2.0  # + 2 GB: address space torch reserves but never touches
                info["dense_probe_address_cap_gb"] = round(cap, 1)
            res, wall, rss, err = run_child(CHILD_TRAIN, str(snap_used), str(run_dir), json.dumps(cfg),
                                            "0" if probe else "1", max_address_gb=cap)
            shutil.rmtree(run_dir, ignore_errors=True)
            if res is None:
                row[label] = {"skipped": f"run failed ({err.splitlines()[-1] if err else 'no output'})"}
                info[f"{label}_error"] = err
                print(f"{n_items:>9,} {label:<6} FAILED: {err[-300:]}", flush=True)
                continue
            hist = res["history"]
            eps = sum(h["events"] for h in hist) / sum(h["seconds"] for h in hist)
            if probe:
                row[label] = {"events_per_s": round(eps, 1), "peak_rss_mb": round(rss),
                              "ppl": None, "ndcg@10": None,
                              "note": f"probe: {hist[-1]['events']:,} events on a {n_items:,}-item snapshot "
                                      f"(full run would take ~{n_events * args.is_epochs / eps / 60:.0f} min); "
                                      f"accuracy not measured"}
            else:
                per_event[label] = res["per_event_ndcg@10"]
                row[label] = {"events_per_s": round(eps, 1), "peak_rss_mb": round(rss),
                              "ppl": round(hist[-1]["val_ppl"], 2), "ndcg@10": round(hist[-1]["ndcg@10"], 4)}
                info[f"{label}_check"] = {  # one-by-one re-scoring agrees with the trainer's batched validation
                    "per_event_mean_ndcg@10": sum(res["per_event_ndcg@10"]) / len(res["per_event_ndcg@10"]),
                    "n_heldout_events": len(res["per_event_ndcg@10"])}
            info[f"{label}_run"] = {"train_wall_s": round(res["train_wall_s"], 1), "child_wall_s": round(wall, 1),
                                    "events_trained": sum(h["events"] for h in hist), "config": cfg}
            print(f"{n_items:>9,} {label:<6} {row[label]}", flush=True)
        if "dense" in per_event and "is" in per_event:
            info["paired_ndcg@10_is_minus_dense"] = paired_test(per_event["is"], per_event["dense"])
        d, s = row.get("dense", {}), row.get("is", {})
        if "events_per_s" in d and "events_per_s" in s:
            info["is_over_dense_events_per_s"] = round(s["events_per_s"] / d["events_per_s"], 2)
            info["is_over_dense_peak_rss"] = round(s["peak_rss_mb"] / d["peak_rss_mb"], 3)
        results[str(n_items)] = row
        meta["per_size"][str(n_items)] = info
    return results, meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ml100k", type=Path, default=ML100K, help="ml-100k snapshot folder")
    ap.add_argument("--epochs", type=int, default=2, help="epochs of the ml-100k throughput runs")
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--events", default="10000=200000,100000=200000,1000000=300000",
                    help="events of each synthetic catalog: items=events,...")
    ap.add_argument("--users", type=int, default=5000, help="synthetic users (at most events / 10)")
    ap.add_argument("--is-epochs", type=int, default=1, help="epochs of each dense / IS run")
    ap.add_argument("--negatives", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the dense / IS runs")
    ap.add_argument("--val-owners", type=int, default=1000, help="held-out last events per run")
    ap.add_argument("--dense-max-logits", type=int, default=400_000_000,
                    help="dense runs above this batch x items are probed on a small snapshot (or skipped)")
    ap.add_argument("--dense-probe-events", type=int, default=4000, help="0: skip instead of probing")
    ap.add_argument("--only", choices=["throughput", "is"])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/hrnn-bench-train"))
    ap.add_argument("--out-dir", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args()
    args.sizes = [int(x) for x in args.sizes.split(",")]
    args.events = {int(k): int(v) for k, v in (p.split("=") for p in args.events.split(","))}
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    command = ".venv/bin/python bench/bench_train.py " + " ".join(sys.argv[1:])
    mach = machine()
    date = time.strftime("%Y-%m-%d")

    if args.only in (None, "throughput"):
        tp = throughput(args, args.workdir)
        is_meta = None
        print(f"\nml-100k dense training, {tp['data']['n_items']:,} items, {args.epochs} epochs "
              f"(FLOPs/event counted: {tp['flops_per_event'] / 1e6:.3f} M)")
        head = (f"{'threads':<9}{'events/s':>10}{'GFLOP/s':>9}{'roof fwd':>10}{'roof bwd_h':>11}{'roof bwd_w':>11}"
                f"{'roof sq':>9}{'of fwd':>8}{'of sq':>8}{'RSS MB':>8}")
        print(head + "\n" + "-" * len(head))
        for k, r in tp["runs"].items():
            rf = list(r["roofline_gflop_per_s"].values())
            print(f"{k.split('=')[1]:<9}{r['events_per_s']:>10,}{r['model_gflop_per_s']:>9.2f}{rf[0]:>10.1f}"
                  f"{rf[1]:>11.1f}{rf[2]:>11.1f}{rf[3]:>9.1f}{r['fraction_of_output_shape_roofline']:>8.1%}"
                  f"{r['fraction_of_square_roofline']:>8.1%}{r['peak_rss_mb']:>8,}")
        t2, t1 = tp["runs"]["threads=2"]["events_per_s"], tp["runs"]["threads=1"]["events_per_s"]
        tp["threads2_over_threads1"] = round(t2 / t1, 2)
        print(f"threads=2 / threads=1: {tp['threads2_over_threads1']}x")
        out = {"benchmark": "HRNN-meta training throughput (dense, ml-100k) vs matmul roofline",
               "command": command, "machine": mach, "date": date, **tp}
        tp_path = args.out_dir / "train_throughput.json"
        if tp_path.exists() and "is_vs_dense" in (prev := json.loads(tp_path.read_text())):
            out["is_vs_dense"] = prev["is_vs_dense"]  # kept from an earlier --only is run
        tp_path.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.out_dir / 'train_throughput.json'}")

    if args.only in (None, "is"):
        results, is_meta = is_vs_dense(args, args.workdir)
        (args.out_dir / "is_vs_dense.json").write_text(json.dumps(results, indent=2) + "\n")
        meta = {"benchmark": "dense vs importance-sampled softmax (paper 3.1, Table 8)", "command": command,
                "machine": mach, "date": date,
                "accuracy": "trainer's held-out last events (val_owners owners, never trained on), full-catalog "
                            "ranking, last epoch's weights; paired bootstrap (metrics.paired_test) on per-event NDCG@10",
                "targets": {"1M items": "IS events/s >= 10 x dense, IS peak RSS <= dense / 2.5",
                            "10k items": "NDCG@10 within noise (paired CI contains 0)"},
                **is_meta}
        # machine, command and per-size details live next to the throughput results (is_vs_dense.json
        # keeps the exact {"<n_items>": {"dense": ..., "is": ...}} shape)
        tp_path = args.out_dir / "train_throughput.json"
        tp_all = json.loads(tp_path.read_text()) if tp_path.exists() else {}
        tp_all["is_vs_dense"] = meta
        tp_path.write_text(json.dumps(tp_all, indent=2, default=float) + "\n")
        print(f"\n{'items':>9} {'output':<6}{'events/s':>10}{'peak RSS MB':>12}{'PPL':>10}{'NDCG@10':>9}")
        for n, row in results.items():
            for label, r in row.items():
                if "skipped" in r:
                    print(f"{int(n):>9,} {label:<6}  skipped: {r['skipped']}")
                    continue
                ppl = f"{r['ppl']:>10.1f}" if r["ppl"] is not None else f"{'-':>10}"
                nd = f"{r['ndcg@10']:>9.4f}" if r["ndcg@10"] is not None else f"{'-':>9}"
                print(f"{int(n):>9,} {label:<6}{r['events_per_s']:>10,.0f}{r['peak_rss_mb']:>12,}{ppl}{nd}"
                      f"{'  (probe)' if 'note' in r else ''}")
            info = is_meta["per_size"][n]
            if "is_over_dense_events_per_s" in info:
                print(f"{'':>9} IS/dense: {info['is_over_dense_events_per_s']}x events/s, "
                      f"{info['is_over_dense_peak_rss']}x peak RSS")
            if "paired_ndcg@10_is_minus_dense" in info:
                p = info["paired_ndcg@10_is_minus_dense"]
                print(f"{'':>9} NDCG@10 IS - dense: {p['mean_diff']:+.4f} [{p['ci_low']:+.4f}, {p['ci_high']:+.4f}] "
                      f"p={p['p_value']:.3f}")
        print(f"wrote {args.out_dir / 'is_vs_dense.json'} (details: train_throughput.json, key is_vs_dense)")


if __name__ == "__main__":
    main()
