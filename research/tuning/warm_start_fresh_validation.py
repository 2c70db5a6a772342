"""Diagnostic for issue 19 (docs/evaluation/warm_start.md, yoochoose): the warm line of a finished
``hrnn-research warm-start`` replay again, each night's warm fit validated on owners whose last event the
previous model never trained on (a ``holdout.parquet`` in the night's training snapshot: owners with >= 2
events whose last event is at or after the previous frame's start), instead of the trainer's random
``train.val_owners``, whose last events the previous model mostly trained on. The full line is the replay's
(``REF/day-k.npz``); each warm fit starts from the previous diagnostic night's model (night 1: the replay's
day-0 model). Prints and writes ``OUT/diag.json``: per night the best epoch, the validation curve, the test
metrics, and paired tests (owners resampled) against the replay's full and warm lines.

    HRNN__TRAIN__THREADS=1 python research/tuning/warm_start_fresh_validation.py SNAPSHOT REF OUT DAYS TEST_FRACTION
"""

import dataclasses, json, shutil, sys, time  # noqa: E401
from pathlib import Path
import numpy as np
import pyarrow as pa, pyarrow.parquet as pq
from hrnn_core.config import load_config
from hrnn_core.model.features import HOLDOUT_FILE
from research.experiments.warm_start import _rolling, _score, _best, METRICS


def main() -> None:
    snap, ref, out, n_days, tf = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    cfg = load_config()
    data, split = _rolling(snap, tf)
    frames = split.frames
    from hrnn_core.evaluation.harness import train_data
    from hrnn_core.evaluation.hrnn_scorer import HRNNScorer
    from hrnn_core.evaluation.protocols import build_split
    from hrnn_core.retrain import warm_train_config
    from hrnn_core.evaluation.metrics import paired_test
    days, prev = [], ref / "warm-0"
    for k in range(1, n_days + 1):
        frame = frames[k]
        sub = build_split("temporal", data, cut_time=frame.start, valid_fraction=0.0)
        run_dir = out / f"warm-{k}"
        shutil.rmtree(run_dir, ignore_errors=True)
        train = warm_train_config(dataclasses.replace(cfg.train, progress=False), cfg.retrain)
        scorer = HRNNScorer(model=cfg.model, train=train, device=cfg.train.device, run_dir=run_dir / "train", init_from=_best(prev))
        tdata = train_data(sub, "train", 0, run_dir / "data")
        seqs = pq.read_table(Path(tdata.snapshot_dir) / "sequences.parquet", columns=["timestamps"]).column("timestamps").to_pylist()
        rows = [i for i, ts in enumerate(seqs) if len(ts) >= 2 and ts[-1] >= frames[k - 1].start]
        pq.write_table(pa.table({"row": pa.array(rows, pa.int64())}), Path(tdata.snapshot_dir) / HOLDOUT_FILE)
        t0 = time.perf_counter(); scorer.fit(tdata); secs = time.perf_counter() - t0
        metrics, per = _score(scorer, frame, split.n_items)
        ref_day = np.load(ref / f"day-{k}.npz")
        rep = json.load(open(run_dir / "train" / "report.json"))
        days.append({"day": k, "n_events": len(frame.cases), "holdout_owners": len(rows), "fit_seconds": secs,
                     "best_epoch": rep["best_epoch"], "val_ndcg@10": [e["ndcg@10"] for e in rep["epochs"]],
                     "metrics": metrics, "per": per, "owners": ref_day["owners"], "ref": ref_day})
        print(k, len(rows), rep["best_epoch"], [round(e["ndcg@10"], 4) for e in rep["epochs"]], metrics, flush=True)
        prev = run_dir
    owners = np.concatenate([d["owners"] for d in days])
    res = {"snapshot_id": data.snapshot_id, "test_fraction": tf, "days": [{k: v for k, v in d.items() if k not in ("per", "owners", "ref")} for d in days]}
    for m in METRICS:
        new = np.concatenate([d["per"][m] for d in days])
        for line in ("full", "warm"):
            old = np.concatenate([d["ref"][f"{line}_{m}"] for d in days])
            res[f"{m}: leak-free warm - {line} (reference replay)"] = paired_test(new, old, clusters=owners)
        res[f"{m}: mean"] = float(new.mean())
    out.mkdir(parents=True, exist_ok=True)
    (out / "diag.json").write_text(json.dumps(res, indent=2, default=float))
    print(json.dumps({k: v for k, v in res.items() if k != "days"}, indent=1, default=float))


if __name__ == "__main__":
    main()
