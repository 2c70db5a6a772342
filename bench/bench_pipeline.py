"""The whole pipeline at scale: 10M events over 1M items on this machine, stage by stage.

Stages (each in its own process, so its wall time and peak RSS are its own):
synth -> ingest (GX validation, quarantine, DuckDB load) -> transform (sessions, time deltas,
hourly popularity; SQL) -> snapshot (Parquet as of the cut) -> train + evaluate HRNN-meta
(importance-sampled softmax, temporal protocol, full-catalogue ranking of the test hour) ->
pop baseline on the same split (the gate's rival) -> register both, gated promotion ->
batch export of the top-25 for every user (CSV + JSONL + manifest).

These are the retrain's own functions (``hrnn_core.retrain``), the DAGs' tasks, run in order
without the Airflow scheduler; the CLI commands for ingest/transform/export.

    .venv/bin/python bench/bench_pipeline.py                     # 10M events, 1M items, 100k users
    .venv/bin/python bench/bench_pipeline.py --events 200000 --items 20000 --users 2000   # smoke

Writes ``bench/results/pipeline_<events>.json``: per stage seconds, peak RSS (MB), and what the
stage produced. There is no baseline: this run measures where the time and memory go.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
HRNN = str(Path(PY).with_name("hrnn"))
HRNN_RESEARCH = str(Path(PY).with_name("hrnn-research"))  # `hrnn-research synth`: the generator is not the product


def run_stage(name: str, cmd: list[str], env: dict, log: Path) -> dict:
    """Run one stage; its wall seconds, peak RSS (MB, of the stage process) and stdout tail."""
    started = time.time()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.time() - started
    code = os.waitstatus_to_exitcode(status)
    tail = log.read_text()[-1500:]
    if code != 0:
        raise SystemExit(f"stage {name} failed (exit {code}); log {log}:\n{tail}")
    result = {"seconds": round(seconds, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024), "log": str(log)}
    last = [line for line in tail.splitlines() if line.startswith("RESULT ")]
    if last:
        result["result"] = json.loads(last[-1][len("RESULT "):])
    print(f"{name:<12} {seconds:8.1f} s  {result['peak_rss_mb']:>7,} MB  {result.get('result', '')}", flush=True)
    return result


def py(code: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(code)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--negatives", type=int, default=2048)
    ap.add_argument("--test-hours", type=float, default=1.0, help="temporal test window after the cut")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/hrnn-bench-pipeline"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    out = args.out or REPO / "bench" / "results" / f"pipeline_{args.events}.json"

    shutil.rmtree(args.workdir, ignore_errors=True)
    data, logs = args.workdir / "data", args.workdir / "logs"
    logs.mkdir(parents=True)
    env = {**os.environ, "HRNN_DATA_DIR": str(data), "BENTOML_HOME": str(data / "bentoml"),
           "HRNN__TRAIN__OUTPUT": "sampled", "HRNN__TRAIN__EPOCHS": str(args.epochs),
           "HRNN__TRAIN__BATCH_SIZE": str(args.batch_size), "HRNN__TRAIN__N_NEGATIVES": str(args.negatives),
           "HRNN__TRAIN__THREADS": str(args.threads), "HRNN__TRAIN__PROGRESS": "false",
           "HRNN__MODEL__HIDDEN_SIZE": str(args.hidden), "HRNN__RETRAIN__MODELS": "hrnn,pop",
           "HRNN__RETRAIN__TEST_HORIZON_HOURS": str(args.test_hours), "OMP_NUM_THREADS": str(args.threads)}
    stages: dict[str, dict] = {}
    print(f"{args.events:,} events, {args.items:,} items, {args.users:,} users -> {args.workdir}", flush=True)
    stages["synth"] = run_stage("synth", [HRNN_RESEARCH, "synth", "--out", str(args.workdir / "raw"),
                                          "--events", str(args.events), "--items", str(args.items),
                                          "--users", str(args.users)], env, logs / "synth.log")
    stages["ingest"] = run_stage("ingest", [HRNN, "ingest", "--path", str(args.workdir / "raw")], env, logs / "ingest.log")
    stages["transform"] = run_stage("transform", [HRNN, "transform"], env, logs / "transform.log")
    snap_file = args.workdir / "snapshot.json"
    stages["snapshot"] = run_stage("snapshot", py(f"""
        import json, math
        from hrnn_core.config import load_config
        from hrnn_core.retrain import make_snapshot
        from hrnn_core.data.warehouse import connect
        cfg = load_config()
        with connect(cfg, read_only=True) as con:
            end = con.execute('select max("timestamp") from interactions').fetchall()[0][0]
        cut = math.floor(end) + 1
        snap = make_snapshot(cfg, cut)
        open({str(snap_file)!r}, "w").write(json.dumps({{**snap, "as_of": cut}}))
        print("RESULT", json.dumps({{"n_events": snap["n_events"]}}))
    """), env, logs / "snapshot.log")
    for kind in ("hrnn", "pop"):
        stages[f"train_{kind}"] = run_stage(f"train_{kind}", py(f"""
            import json
            from hrnn_core.config import load_config
            from hrnn_core.retrain import train_and_evaluate
            run = train_and_evaluate(load_config(), json.load(open({str(snap_file)!r})), {kind!r})
            m = run["metrics"]
            print("RESULT", json.dumps({{"fit_seconds": run["fit_seconds"], "seconds": run["seconds"],
                                         "n_test_events": m.get("n_events"), "ndcg@10": m.get("ndcg@10"),
                                         "recall@10": m.get("recall@10"), "ppl": m.get("ppl")}}))
        """), env, logs / f"train_{kind}.log")
    stages["register"] = run_stage("register", py(f"""
        import json
        from hrnn_core.config import load_config
        from hrnn_core.retrain import register_and_promote, runs_dir
        cfg = load_config()
        snap = json.load(open({str(snap_file)!r}))
        runs = [json.load(open(runs_dir(cfg, snap["snapshot_id"]) / k / "metrics.json")) for k in ("hrnn", "pop")]
        d = register_and_promote(cfg, snap, runs, None, (0.0, float(snap["as_of"])))
        print("RESULT", json.dumps({{k: d[k] for k in ("candidate", "champion", "promoted", "reason")}}))
    """), env, logs / "register.log")
    # The export scores with HRNN-meta: the champion if it won the gate, else the candidate by tag
    # (this run measures the pipeline at scale; the gate's decision is reported as it fell).
    tag = stages["register"]["result"]["champion"] or stages["register"]["result"]["candidate"]
    stages["export"] = run_stage("export", [HRNN, "export", "--k", "25", "--model", tag], env, logs / "export.log")

    total = sum(s["seconds"] for s in stages.values())
    report = {
        "events": args.events, "items": args.items, "users": args.users,
        "settings": {"epochs": args.epochs, "hidden": args.hidden, "batch_size": args.batch_size,
                     "negatives": args.negatives, "test_hours": args.test_hours, "threads": args.threads,
                     "output": "sampled"},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "stages": stages, "total_seconds": round(total, 1),
        "peak_rss_mb": max(s["peak_rss_mb"] for s in stages.values()),
        "disk_mb": round(sum(f.stat().st_size for f in data.rglob("*") if f.is_file()) / 2**20),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"total {total / 60:.1f} min, peak RSS {report['peak_rss_mb']:,} MB -> {out}")


if __name__ == "__main__":
    main()
