"""Run many ``research/tuning/tune_hrnn.py`` fits at once, one process (one torch thread) each, and merge them.

Each job is ``protocol:candidate:seed`` (candidate as ``tune_hrnn.py --only`` takes it, e.g.
``gru:s7_ties``). Jobs run ``--jobs`` at a time, each writing its own JSON; at the end (or at
``--deadline`` seconds, when unfinished jobs are stopped and reported as such) every finished run is
merged into ``--out`` in ``tune_hrnn.py``'s format, and the seed means per (protocol, candidate) are
printed. Validation data only, like ``tune_hrnn.py``: test cases are never scored.

    .venv/bin/python research/tuning/tune_parallel.py --snapshot data/snapshots/<id> --jobs 2 \\
        --run leave_one_out:s7_ties:0,1 --run leave_one_out:gru:s7_ties:0,1 --out /tmp/tune.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent


def expand(spec: str) -> list[tuple[str, str, int]]:
    """``protocol:candidate:s1,s2`` -> [(protocol, candidate, seed), ...]; the candidate may hold a colon."""
    protocol, rest = spec.split(":", 1)
    candidate, seeds = rest.rsplit(":", 1)
    return [(protocol, candidate, int(s)) for s in seeds.split(",") if s]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--snapshot", type=Path, required=True)
    ap.add_argument("--run", action="append", default=[], help="protocol:candidate:seeds (repeatable)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--deadline", type=float, default=0.0, help="stop unfinished jobs after this many seconds (0: none)")
    ap.add_argument("--params", default="{}", help="protocol parameters, passed to tune_hrnn.py")
    ap.add_argument("--mixes", default="", help="also score HRNN-meta fits at these inference lambdas (tune_hrnn.py)")
    ap.add_argument("--trends", default="", help="also score HRNN-meta fits with these trend terms (tune_hrnn.py)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    queue = [job for spec in args.run for job in expand(spec)]
    work = Path(tempfile.mkdtemp(prefix="tune-parallel-"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(HERE.parents[1]), os.environ.get("PYTHONPATH", "")])}
    started, running, done, stopped = time.time(), {}, [], []
    while queue or running:
        while queue and len(running) < args.jobs:
            protocol, cand, seed = job = queue.pop(0)
            out = work / f"{len(done) + len(running) + len(stopped):03d}.json"
            log = open(out.with_suffix(".log"), "w")  # noqa: SIM115 - closed when the job ends
            cmd = [sys.executable, str(HERE / "tune_hrnn.py"), "--snapshot", str(args.snapshot), "--protocols",
                   protocol, "--only", cand, "--seed", str(seed), "--params", args.params, "--out", str(out)]
            for flag, value in (("--mixes", args.mixes), ("--trends", args.trends)):
                if value and not cand.startswith(("gru:", "baseline:")):
                    cmd += [flag, value]
            running[job] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), out, log)
            print(f"[{time.time() - started:6.0f} s] start {protocol} {cand} seed {seed}", flush=True)
        time.sleep(2)
        late = args.deadline and time.time() - started > args.deadline
        for job, (proc, out, log) in list(running.items()):
            if proc.poll() is None and not late:
                continue
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
            del running[job]
            ok = proc.returncode == 0 and out.exists()
            (done if ok else stopped).append((job, out))
            tail = "" if ok else " (stopped or failed: " + out.with_suffix(".log").read_text()[-300:].replace("\n", " | ") + ")"
            print(f"[{time.time() - started:6.0f} s] end {' '.join(map(str, job))}{tail}", flush=True)
        if late:
            stopped += [(job, None) for job in queue]
            queue = []

    runs = []
    for _, out in done:
        runs += json.loads(out.read_text())["runs"]
    report = {"snapshot": str(args.snapshot), "note": "fit on Split.valid_train, scored on Split.valid; test never scored",
              "wall_seconds": round(time.time() - started, 1), "jobs": args.jobs, "runs": runs,
              "not_finished": [list(job) for job, _ in stopped]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=float) + "\n")
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in runs:
        groups[(r["protocol"], r["config"])].append(r)
    print(f"{'protocol':<14}{'config':<26}{'seeds':>8}{'NDCG@10 mean':>14}{'Rec@10 mean':>13}  per seed")
    for (protocol, config), rs in sorted(groups.items()):
        rs.sort(key=lambda r: r["seed"])
        nd = [r["valid_ndcg@10"] for r in rs]
        rc = [r["valid_recall@10"] for r in rs]
        print(f"{protocol:<14}{config:<26}{len(rs):>8}{sum(nd) / len(nd):>14.4f}{sum(rc) / len(rc):>13.4f}  "
              + " ".join(f"{r['seed']}:{v:.4f}" for r, v in zip(rs, nd)))
    if stopped:
        print(f"not finished: {[list(j) for j, _ in stopped]}")


if __name__ == "__main__":
    main()
