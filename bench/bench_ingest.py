"""Benchmark: ingest + validate + sessions on a synthetic log.

Usage:
    .venv/bin/python bench/bench_ingest.py [--events 10000000] [--items 1000000] [--users 100000]
        [--out bench/results/ingest.json] [--workdir /tmp/hrnn-bench-ingest]

Steps, each measured in a fresh child process so peak RSS is the pipeline's own:
  0. generate the synthetic log (not timed as part of the pass);
  1. baseline: a plain DuckDB load of the same Parquet file (no parsing, validation, dedupe):
     the floor any ingest pays on this machine, measured in the same run;
  2. the pass: `hrnn ingest` of users, items, interactions (parse, dedupe, Great Expectations
     validation, quarantine, load, id maps), then sessions.
Prints a table and writes JSON with events/s, seconds per stage, peak RSS and the ratio of the
pass to the baseline. Targets (issue 2): the pass under 60 s and under 4 GB RSS on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD_PASS = r"""
import json, sys, time
from pathlib import Path
from hrnn_core.config import load_config
from hrnn_core.data.ingest import ingest_file
from hrnn_core.data.transforms import build_sessions
from hrnn_core.data.warehouse import connect
data, wh = Path(sys.argv[1]), sys.argv[2]
cfg = load_config(overrides={"paths": {"warehouse": wh, "data_dir": str(Path(wh).parent)}})
out = {"stages": {}}
t_all = time.perf_counter()
with connect(cfg) as con:
    for table in ("users", "items", "interactions"):
        t = time.perf_counter()
        r = ingest_file(cfg, data / f"{table}.parquet", table, con)
        out["stages"][f"ingest {table}"] = time.perf_counter() - t
        out[f"{table}_report"] = {k: r.to_dict()[k] for k in ("rows_in", "accepted", "duplicates", "quarantined", "phase_seconds")}
    t = time.perf_counter()
    out["sessions"] = build_sessions(con, cfg)
    out["stages"]["sessions"] = time.perf_counter() - t
out["total_s"] = time.perf_counter() - t_all
print(json.dumps(out))
"""

CHILD_BASELINE = r"""
import json, sys, time, duckdb
t = time.perf_counter()
con = duckdb.connect(sys.argv[2], config={"memory_limit": "3GB", "threads": 2})
con.execute("create table interactions as select * from read_parquet($p)", {"p": sys.argv[1]})
n = con.execute("select count(*) from interactions").fetchall()[0][0]
con.close()
print(json.dumps({"rows": n, "total_s": time.perf_counter() - t}))
"""


def run_child(code: str, *args: str) -> tuple[dict, float, float]:
    """Run ``code`` in a fresh interpreter; (its JSON output, wall seconds, its own peak RSS MB)."""
    import tempfile  # noqa: PLC0415

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=out, stderr=err, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)  # rusage of this child alone
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            sys.exit(f"benchmark step failed:\n{err.read()[-3000:]}")
        return json.loads(out.read().strip().splitlines()[-1]), wall, usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/hrnn-bench-ingest"))
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "ingest.json")
    args = ap.parse_args()

    work = args.workdir
    data = work / f"synth-{args.events}-{args.items}-{args.users}-{args.seed}"
    if not (data / "interactions.parquet").exists():
        print(f"generating {args.events:,} events over {args.items:,} items ...", flush=True)
        from research import synth  # noqa: PLC0415

        synth.generate(data, n_users=args.users, n_items=args.items, n_events=args.events, seed=args.seed)

    for f in work.glob("*.duckdb*"):
        f.unlink()
    base, base_wall, base_rss = run_child(CHILD_BASELINE, str(data / "interactions.parquet"), str(work / "baseline.duckdb"))
    res, pass_wall, pass_rss = run_child(CHILD_PASS, str(data), str(work / "warehouse.duckdb"))
    for f in work.glob("*.duckdb*"):
        f.unlink()

    events = res["interactions_report"]["accepted"]
    result = {
        "benchmark": "ingest + validate + sessions",
        "command": "make bench  # = .venv/bin/python bench/bench_ingest.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "data": {"generator": "research.synth", "events": args.events, "items": args.items,
                 "users": args.users, "seed": args.seed},
        "baseline_plain_duckdb_load_s": round(base["total_s"], 2),
        "pass_s": round(res["total_s"], 2),
        "pass_wall_s_with_startup": round(pass_wall, 2),
        "events_per_s": round(events / res["total_s"]),
        "ratio_pass_to_baseline": round(res["total_s"] / base["total_s"], 2),
        "peak_rss_mb": round(pass_rss),
        "peak_rss_baseline_mb": round(base_rss),
        "stages_s": {k: round(v, 2) for k, v in res["stages"].items()},
        "interactions_phases_s": res["interactions_report"]["phase_seconds"],
        "sessions": res["sessions"],
        "targets": {"pass_s": 60, "peak_rss_mb": 4096},
        "date": time.strftime("%Y-%m-%d"),
    }
    result["meets_targets"] = result["pass_wall_s_with_startup"] < 60 and result["peak_rss_mb"] < 4096
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"\n{'stage':<28}{'seconds':>10}")
    for k, v in result["stages_s"].items():
        print(f"{k:<28}{v:>10.2f}")
    print(f"{'pass total':<28}{result['pass_s']:>10.2f}")
    print(f"{'baseline (plain load)':<28}{result['baseline_plain_duckdb_load_s']:>10.2f}")
    print(f"\nevents/s {result['events_per_s']:,}   pass/baseline {result['ratio_pass_to_baseline']}x   "
          f"peak RSS {result['peak_rss_mb']:,} MB   meets targets: {result['meets_targets']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
