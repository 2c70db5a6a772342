"""Tune the HRNN-meta default config on VALIDATION data only (never on test).

For each protocol (leave_one_out, temporal) on an ml-100k snapshot:
``split = build_split(protocol, snapshot)``; every candidate config fits ``HRNNScorer`` on the
split's ``valid_train`` part and scores ``split.valid`` (the recipe of ``hrnn_core.evaluation.splits``:
tune on (valid_train, valid), then fit on train and score test). Test cases are never scored.

Candidates set the tuned fields explicitly (OLD_MODEL/OLD_TRAIN plus their overrides); every
other field keeps its ModelConfig/TrainConfig default. The JSON records the full configs of
every run.

Results are cached per (protocol, candidate) in the JSON, so an interrupted run resumes;
``--force`` refits. One training at a time, torch threads = 1 (shared 2-core machine).

    .venv/bin/python research/tuning/tune_hrnn.py --snapshot data/snapshots/<id>    # all protocols, all candidates
    .venv/bin/python research/tuning/tune_hrnn.py --snapshot ... --protocols temporal --only h128_p4,h192_p4
    .venv/bin/python research/tuning/tune_hrnn.py --snapshot ... --only gru:s4_exseen   # the plain-GRU baseline, same config
    .venv/bin/python research/tuning/tune_hrnn.py --snapshot <yoochoose> --protocols temporal --params '{"exclude_seen": false}' \
        --only s5_im0.15 --mixes 0,0.3 --out bench/results/tune_hrnn_yoochoose.json   # + rescored at lambda 0, 0.3
    .venv/bin/python research/tuning/tune_hrnn.py --snapshot ... --only s7_ties --trends 168:0.5,720:1   # + the eq. (5) trend term

Candidates that set a field the configs no longer have (``retired_fields``: s8_trend_auto's
``model.trend_auto``, removed with the trainer's trend choice) stay in GRID as the record of what
was run (their results stay in bench/results); the driver skips them when running the whole grid
and refuses them by name.

Settled knobs (issue 17) are the code's behaviour now, so every candidate runs with them: ties in a
fresh order each epoch, seen items out of the softmax where owners never repeat one (on for
ml-100k), the user id (when on) as an output vector, the trend term in dense training when its
weight is > 0. Stages 1-6 ran before some of those existed (off then): a refit of an early
candidate is not its recorded run, whose full configs the rows of bench/results/tune_hrnn.json
keep. Candidates whose only point was a removed alternative (the id as an input field or with
dropout, the inference lambda chosen per epoch, the softmax with seen items, file-order ties,
the trend term left out of training) were dropped from GRID; their rows stay in bench/results and
their findings in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from hrnn_core.config import ModelConfig, TrainConfig
from hrnn_core.evaluation.harness import make_scorer, score_cases, train_data
from hrnn_core.evaluation.protocols import build_split
from hrnn_core.evaluation.splits import SnapshotData
from hrnn_core.train.trainer import best_epoch
from research.scorers import StudyScorer

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "tune_hrnn.json"  # with every raw result

# The tuned fields at their values before this tuning (the old defaults). Every candidate spells
# them all out, so the grid means the same thing after the defaults change; fields not listed
# keep the current ModelConfig/TrainConfig defaults (unchanged by the tuning).
OLD_MODEL = {"hidden_size": 64, "dropout": 0.1, "inference_item_meta_mix": 0.0, "field_dim": 32, "input_size": 64,
             "trend_weight": 0.0, "use_user_id": False}
OLD_TRAIN = {"epochs": 10, "early_stopping_metric": "val_loss", "patience": 3, "lr": 3e-3, "batch_size": 32,
             "item_meta_mix": None}
# Early stopping on the trainer's own held-out last events, by NDCG@10 (the metric we ship on);
# "epochs" = the cap (also the length of the cosine LR decay); the best checkpoint is scored.
ES = {"early_stopping_metric": "ndcg@10"}

# name -> (model overrides, train overrides) on top of OLD_MODEL / OLD_TRAIN
GRID: dict[str, tuple[dict, dict]] = {
    # the old defaults, for reference
    "old_defaults": ({}, {}),
    # stage 1: capacity and epoch cap, early stopping on ndcg@10
    "h64_p4": ({"hidden_size": 64}, {**ES, "epochs": 30, "patience": 4}),
    "h128_p4": ({"hidden_size": 128}, {**ES, "epochs": 30, "patience": 4}),
    "h192_p4": ({"hidden_size": 192}, {**ES, "epochs": 30, "patience": 4}),
    # stage 2: one change at a time around h128
    "h128_drop0.3": ({"hidden_size": 128, "dropout": 0.3}, {**ES, "epochs": 30, "patience": 4}),
    "h128_lr1e-3": ({"hidden_size": 128}, {**ES, "epochs": 30, "patience": 4, "lr": 1e-3}),
    "h128_bs64": ({"hidden_size": 128}, {**ES, "epochs": 30, "patience": 4, "batch_size": 64}),
    "h128_mix0": ({"hidden_size": 128}, {**ES, "epochs": 30, "patience": 4, "item_meta_mix": 0.0}),
    "h128_infmix0.3": ({"hidden_size": 128, "inference_item_meta_mix": 0.3}, {**ES, "epochs": 30, "patience": 4}),
    # stage 3 (after stages 1-2 on validation): combine what helped on both protocols (dropout 0.3,
    # inference mix 0.3) and make early stopping less trigger-happy (runs that stopped by epoch
    # 8-12 on a noisy dip scored worst); the epoch cap also sets the cosine LR decay length
    "h128_d0.3_im0.3_p6": ({"hidden_size": 128, "dropout": 0.3, "inference_item_meta_mix": 0.3},
                           {**ES, "epochs": 30, "patience": 6}),
    "h128_d0.3_im0.3_e20": ({"hidden_size": 128, "dropout": 0.3, "inference_item_meta_mix": 0.3},
                            {**ES, "epochs": 20, "patience": 5}),
    "h64_im0.3_e40_p6": ({"hidden_size": 64, "inference_item_meta_mix": 0.3}, {**ES, "epochs": 40, "patience": 6}),
    # stage 4 (session 3, for leave_one_out): fields the earlier stages never varied, one at a
    # time around the chosen config: the width of the field projections and of the GRU input
    # (the item id reaches the GRU through 32 -> 64 dims), the BPTT window, weight decay
    **{name: ({"hidden_size": 128, "dropout": 0.3, "inference_item_meta_mix": 0.3, **m},
              {**ES, "epochs": 30, "patience": 6, **t}) for name, (m, t) in {
        "s4_in128": ({"input_size": 128}, {}),
        "s4_fd64_in128": ({"field_dim": 64, "input_size": 128}, {}),
        "s4_bptt64": ({}, {"bptt": 64}),
        "s4_wd0.1": ({}, {"weight_decay": 0.1}),
        "s4_h256_d0.5": ({"hidden_size": 256, "dropout": 0.5}, {}),
    }.items()},
    # stage 5 (after stage 4 tied the plain GRU on the leave_one_out test set): around the stage-4
    # choice, the settings only HRNN-meta has (the eq. 2 metadata mix) and its regularisation/width
    **{name: ({"hidden_size": 128, "dropout": 0.3, "inference_item_meta_mix": 0.3, "field_dim": 64,
               "input_size": 128, **m}, {**ES, "epochs": 30, "patience": 6, **t})
       for name, (m, t) in {
        "s5_im0.5": ({"inference_item_meta_mix": 0.5}, {}),
        "s5_im0.15": ({"inference_item_meta_mix": 0.15}, {}),
        "s5_im0": ({"inference_item_meta_mix": 0.0}, {}),
        "s5_d0.4": ({"dropout": 0.4}, {}),
        "s5_fd96_in192": ({"field_dim": 96, "input_size": 192}, {}),
    }.items()},
    # stage 6 (session 4, after stage 5 tied the plain GRU on the leave_one_out test set over 3
    # seeds): inputs the GRU cannot have, around the stage-5 choice: the rating as a reward weight
    # (section 3.3) and, for yoochoose (no metadata, no user features, clicks only: HRNN-meta differs
    # from the GRU by the time-delta input alone), the same without it
    **{name: ({"hidden_size": 128, "dropout": 0.3, "inference_item_meta_mix": 0.15, "field_dim": 64,
               "input_size": 128, **m}, {**ES, "epochs": 30, "patience": 6, **t})
       for name, (m, t) in {
        "s6_evw0.5": ({}, {"event_value_weight": 0.5}),
        "s6_shipped_notd": ({"use_time_delta": False}, {}),
    }.items()},
    # stage 7 (session 5): 76 % of ml-100k events share their second with another event of the same
    # user (a page of ratings sent at once) and their file order is arbitrary: train each tie in a
    # fresh random order every epoch (the code's behaviour now); a longer cap on top; then the eq. (5)
    # trend term at scoring (grid of windows and weights scored on the s7_ties fits:
    # bench/results/tune_hrnn_trend.json), the chosen one as a candidate of its own
    **{name: ({"hidden_size": 128, "dropout": 0.3, "inference_item_meta_mix": 0.15, "field_dim": 64,
               "input_size": 128, **m}, {**ES, "epochs": 30, "patience": 6, **t})
       for name, (m, t) in {
        "s7_ties": ({}, {}),
        "s7_ties_e40": ({}, {"epochs": 40}),
        "s7_ties_trend": ({"trend_weight": 0.5, "trend_window_seconds": 30 * 86_400.0}, {}),
        # stage 8 (session 6): the trend window (or none) chosen per dataset on the trainer's own
        # validation events after training (model.trend_auto); yoochoose validation wants 1 h, ml-100k 30 days.
        # Retired: model.trend_auto is gone (the term is trained with, stage 10); kept as the record of the runs
        "s8_trend_auto": ({"trend_weight": 0.5, "trend_window_seconds": 30 * 86_400.0, "trend_auto": True}, {}),
        # stages 9-10 (sessions 7-8): the user's id as an output vector added to the state (a matrix-factorization
        # term that users without training events do not get), and the eq. (5) trend term in training as well as
        # at scoring, so the network learns the residual p(a | h) beside q(t); weight 0.5 (the scoring weight)
        # and 1 (eq. 5 exactly). Both are the code's behaviour now (stage 9's s9_uidout differed by the second)
        "s10_trtrain": ({"trend_weight": 0.5, "trend_window_seconds": 30 * 86_400.0, "use_user_id": True}, {}),
        "s10_trtrain_w1": ({"trend_weight": 1.0, "trend_window_seconds": 30 * 86_400.0, "use_user_id": True}, {}),
    }.items()},
}

# shipped as the ModelConfig/TrainConfig defaults (docs/benchmarks.md); until 2026-11-26: h128_d0.3_im0.3_p6,
# until 2026-12-04: s5_im0.15, then s7_ties_trend until session 7, s9_uidout until session 8; stage 4's choice
# was s4_exseen_fd64_in128 (inference lambda 0.3)
CHOSEN = "s10_trtrain"


def retired_fields(name: str) -> list[str]:
    """The fields candidate ``name`` sets that ModelConfig/TrainConfig no longer have (it cannot be fitted)."""
    m, t = GRID[name]
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return sorted([f"model.{k}" for k in {**OLD_MODEL, **m} if k not in model_fields]
                  + [f"train.{k}" for k in {**OLD_TRAIN, **t} if k not in train_fields])


def _configs(name: str) -> tuple[ModelConfig, TrainConfig]:
    m, t = GRID[name]
    retired = retired_fields(name)
    if retired:
        raise ValueError(f"candidate {name} sets {', '.join(retired)}, which the configs no longer have: "
                         "it is a record of earlier runs (results in bench/results) and cannot be fitted now")
    train_cfg = dataclasses.replace(TrainConfig(), **{**OLD_TRAIN, **t}, threads=1, progress=False, device="cpu")
    return dataclasses.replace(ModelConfig(), **{**OLD_MODEL, **m}), train_cfg


def run_one(split, name: str, seed: int, mixes: tuple[float, ...] = (),
            trends: tuple[tuple[float, float], ...] = ()) -> list[dict]:
    """Fit candidate ``name`` (``gru:<name>``: the plain-GRU baseline with that config); one row,
    plus one per inference lambda in ``mixes`` (the same fit scored again: ``<name>@im<lambda>``)
    and one per (window hours, weight) of the eq. (5) trend term in ``trends`` (``<name>@tr<w>x<h>h``)."""
    plain_gru = name.startswith("gru:")
    model_cfg, train_cfg = _configs(name.removeprefix("gru:"))
    with tempfile.TemporaryDirectory(prefix="tune-hrnn-") as work:
        data = train_data(split, "valid_train", seed, Path(work))
        scorer = StudyScorer(model_cfg, train_cfg, device="cpu", plain_gru=plain_gru)  # rescored below, no refit
        model_cfg = scorer.model_cfg
        t = time.perf_counter()
        scorer.fit(data)
        fit_s = time.perf_counter() - t
        chosen_trend = {"scored_trend_weight": scorer.trend_weight,  # the model's (trend_auto runs: the trainer's choice)
                        "scored_trend_window_hours": scorer.trend_window_seconds / 3600.0}
        scored = [(name, model_cfg, *score_cases(scorer, split.valid, split.n_items))]
        for mix in mixes:
            scorer.set_inference_mix(mix)
            scored.append((f"{name}@im{mix:g}", dataclasses.replace(model_cfg, inference_item_meta_mix=mix),
                           *score_cases(scorer, split.valid, split.n_items)))
        scorer.set_inference_mix(None)  # back to the model's lambda
        for hours, weight in trends:
            scorer.trend_weight, scorer.trend_window_seconds = weight, hours * 3600.0
            scored.append((f"{name}@tr{weight:g}x{hours:g}h",
                           dataclasses.replace(model_cfg, trend_weight=weight, trend_window_seconds=hours * 3600.0),
                           *score_cases(scorer, split.valid, split.n_items)))
    hist = scorer.history
    best = hist[best_epoch(hist, train_cfg) - 1]  # the epoch early stopping kept
    rows = []
    for config, cfg, acc, score_s in scored:
        s = acc.summary()
        rows.append({
            "protocol": split.protocol, "config": config, "seed": seed,
            "model_overrides": GRID[name.removeprefix("gru:")][0], "train_overrides": GRID[name.removeprefix("gru:")][1],
            "valid_ndcg@10": s.get("ndcg@10"), "valid_recall@10": s.get("recall@10"), "valid_mrr@10": s.get("mrr@10"),
            "valid_ppl": s.get("ppl"), "valid_cases": len(split.valid), **(chosen_trend if config == name else {}),
            "fit_seconds": round(fit_s, 1), "score_seconds": round(score_s, 1),
            "epochs_run": len(hist), "best_epoch": best["epoch"],
            "trainer_val_ndcg@10_best": best.get("ndcg@10"),
            "trainer_val_ndcg@10_per_epoch": [round(h.get("ndcg@10", float("nan")), 4) for h in hist],
            "seconds_per_epoch": round(sum(h["seconds"] for h in hist) / max(1, len(hist)), 1),
            "model_config": dataclasses.asdict(cfg), "train_config": dataclasses.asdict(train_cfg),
        })
    return rows


def run_baseline(split, name: str, seed: int) -> dict:
    """A baseline (default options) on the same (valid_train, valid): the bar on validation."""
    with tempfile.TemporaryDirectory(prefix="tune-hrnn-") as work:
        data = train_data(split, "valid_train", seed, Path(work))
        scorer = make_scorer(name)
        t = time.perf_counter()
        scorer.fit(data)
        fit_s = time.perf_counter() - t
        acc, score_s = score_cases(scorer, split.valid, split.n_items)
    s = acc.summary()
    return {"protocol": split.protocol, "config": f"baseline:{name}", "seed": seed,
            "valid_ndcg@10": s.get("ndcg@10"), "valid_recall@10": s.get("recall@10"),
            "valid_mrr@10": s.get("mrr@10"), "valid_ppl": s.get("ppl"), "valid_cases": len(split.valid),
            "fit_seconds": round(fit_s, 1), "score_seconds": round(score_s, 1), "epochs_run": 0, "best_epoch": 0}


def table(rows: list[dict], width: int = 22) -> str:
    """The validation table of a tuning report (``width``: of the config column)."""
    head = (f"{'protocol':<14}{'config':<{width}}{'seed':>5}{'NDCG@10':>9}{'Rec@10':>9}{'PPL':>8}"
            f"{'fit s':>8}{'epochs':>8}{'best':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['protocol']:<14}{r['config']:<{width}}{r['seed']:>5d}{r['valid_ndcg@10']:>9.4f}"
                     f"{r['valid_recall@10']:>9.4f}{(r['valid_ppl'] or float('nan')):>8.0f}{r['fit_seconds']:>8.0f}"
                     f"{r['epochs_run']:>8d}{r['best_epoch']:>6d}")
    return "\n".join(lines)


def open_report(out: Path, snapshot: Path, **extra) -> dict:
    """A tuning report (``out``), its earlier runs kept: fitted on ``Split.valid_train``, scored on ``Split.valid``."""
    report = json.loads(out.read_text()) if out.exists() else {}
    report.setdefault("runs", [])
    report.update({"snapshot": str(snapshot), "machine": f"{platform.machine()} {platform.processor()}".strip(),
                   "torch": torch.__version__, "threads": 1,
                   "note": "fit on Split.valid_train, scored on Split.valid; test never scored", **extra})
    return report


def run_grid(report: dict, out: Path, snapshot: Path, protocols: str, params: str, names: list[str], seed: int,
             force: bool, fit) -> None:
    """The tuning loop of every driver: each candidate ``name`` on each protocol's validation split,
    ``fit(split, name) -> [row, ...]``, each row saved into ``report`` (written to ``out``) as it comes; a candidate
    already in the report is skipped unless ``force``."""
    data = SnapshotData.load(snapshot)
    report["snapshot_id"] = data.snapshot_id
    for protocol in [p for p in protocols.split(",") if p]:
        split = build_split(protocol, data, **json.loads(params))
        print(split.describe(), flush=True)
        for name in names:
            key = (protocol, name, seed)
            done = [r for r in report["runs"] if (r["protocol"], r["config"], r["seed"]) == key]
            if done and not force:
                print(f"{protocol} {name}: cached ndcg@10 {done[0]['valid_ndcg@10']:.4f}", flush=True)
                continue
            print(f"{protocol} {name}: fitting ...", flush=True)
            new = fit(split, name)
            keys = {(r["protocol"], r["config"], r["seed"]) for r in new}
            report["runs"] = [r for r in report["runs"] if (r["protocol"], r["config"], r["seed"]) not in keys] + new
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(report, indent=2, default=float) + "\n")
            for row in new:
                print(f"{protocol} {row['config']}: valid ndcg@10 {row['valid_ndcg@10']:.4f} recall@10 "
                      f"{row['valid_recall@10']:.4f} ppl {row['valid_ppl'] or float('nan'):.0f}; fit "
                      f"{row['fit_seconds']:.0f} s, {row['epochs_run']} epochs (best {row['best_epoch']})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--snapshot", type=Path, required=True, help="ml-100k snapshot folder")
    ap.add_argument("--protocols", default="leave_one_out,temporal")
    ap.add_argument("--only", default="", help="comma-separated candidate names (default: all of GRID)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--baselines", default="", help="also score these baselines on validation, e.g. fm,bpr,pop")
    ap.add_argument("--force", action="store_true", help="refit candidates already in --out")
    ap.add_argument("--params", default="{}", help='protocol parameters as JSON, e.g. \'{"exclude_seen": false}\'')
    ap.add_argument("--mixes", default="", help="also score each fit at these inference lambdas, e.g. 0,0.3")
    ap.add_argument("--trends", default="", help="also score each fit with these eq. (5) trend terms, "
                    "HOURS:WEIGHT each, e.g. 168:0.5,720:1")
    args = ap.parse_args()
    torch.set_num_threads(1)

    names = [n for n in args.only.split(",") if n] or list(GRID)
    names += [f"baseline:{b}" for b in args.baselines.split(",") if b]
    unknown = {n.removeprefix("gru:") for n in names if not n.startswith("baseline:")} - set(GRID)
    if unknown:
        raise SystemExit(f"unknown candidates {sorted(unknown)}; known: {list(GRID)}")
    retired = {n: retired_fields(n.removeprefix("gru:")) for n in names if not n.startswith("baseline:")}
    retired = {n: f for n, f in retired.items() if f}
    if retired and args.only:
        raise SystemExit("; ".join(f"candidate {n} sets {', '.join(f)}, which the configs no longer have"
                                   for n, f in retired.items())
                         + ": a record of earlier runs (results in bench/results), it cannot be fitted now")
    for n, f in retired.items():
        print(f"skipping {n}: it sets {', '.join(f)}, which the configs no longer have (a record of earlier "
              "runs; results in bench/results)", flush=True)
    names = [n for n in names if n not in retired]
    report = open_report(args.out, args.snapshot)
    mixes = tuple(float(m) for m in args.mixes.split(",") if m)
    trends = tuple(tuple(float(x) for x in t.split(":")) for t in args.trends.split(",") if t)

    def fit(split, name: str) -> list[dict]:
        return ([run_baseline(split, name.split(":", 1)[1], args.seed)] if name.startswith("baseline:")
                else run_one(split, name, args.seed, mixes, trends))

    run_grid(report, args.out, args.snapshot, args.protocols, args.params, names, args.seed, args.force, fit)
    order = {n: i for i, n in enumerate(GRID)}
    rows = sorted(report["runs"], key=lambda r: (r["protocol"], order.get(r["config"].split("@")[0], -1), r["config"], r["seed"]))
    print(table(rows))
    m, t = _configs(CHOSEN)
    mo, to = GRID[CHOSEN]
    same = all(getattr(ModelConfig(), k) == getattr(m, k) for k in {**OLD_MODEL, **mo}) and \
        all(getattr(TrainConfig(), k) == getattr(t, k) for k in {**OLD_TRAIN, **to})
    print(f"chosen: {CHOSEN} = {GRID[CHOSEN]}; equal to the current defaults: {same}")


if __name__ == "__main__":
    main()
