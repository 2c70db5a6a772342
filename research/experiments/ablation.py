"""``hrnn-research ablation``: which signals lower PPL (the paper's Table 1).

Rows, each a model fitted on the same ``user_holdout`` split:

1. **popularity**: the training window's item frequencies (``pop``);
2. **item features**: HRNN-meta reading only the *features* of the user's last item (no item
   id input, no memory: the state restarts before every event; ``use_item_id = False``,
   ``use_sequence = False``, every other input off) - "personalize on just the genre of the
   user's last interaction";
3. **sequence**: the plain GRU over item ids (``gru``: time, feedback, user, context and
   metadata off);
4. **sequence + user + item + feedback**: the shipped HRNN-meta (also its time-delta and
   context inputs).

Protocol: ``user_holdout`` with the paper's Table 1 setting, 20 % of users held out, and the
last event of each as the target (PROTOCOLS.md's Table 8 variant), so every test case is one
next-item prediction and PPL is the paper's exp(mean NLL). On the synthetic data
(``research.synth`` with ``write_truth``) the generator's own probability of each test
event is known: ``oracle`` = exp(-mean true log p(item | latent session intent, time bucket)), a
floor no model can beat, and ``oracle without intent`` (intent marginalised over the user's
taste), which a model that reads the session's items can approach but that hides the intent.

The HRNN rows train as the product does: where owners never repeat an item, each event's softmax
leaves out the owner's earlier items (``hrnn_core.train.trainer.resolve_exclude_seen``); reports
recorded before that rule became fixed trained the full softmax here (their train_config says so).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Annotated, Callable

import numpy as np
import typer

from hrnn_core.cli.options import ConfigOpt, DataDirOpt, OutputOpt, cli_config, guard, raw_path_opt
from hrnn_core.errors import HrnnError
from research.experiments import dataset_snapshot, write_report

ITEM_FEATURES_ONLY = {"use_sequence": False, "use_item_id": False, "use_time_delta": False, "use_feedback": False,
                      "use_user_features": False, "use_user_id": False, "use_context": False,
                      "use_item_meta": True}
ROWS = (  # (name, model kind, model-config changes, the paper's Seq/User/Item/Feedback marks)
    ("popularity", "pop", None, "x x x x"),
    ("item_features", "hrnn", ITEM_FEATURES_ONLY, "x x v x"),
    ("sequence", "gru", None, "v x x x"),
    ("hrnn_meta", "hrnn", {}, "v v v v"),
)
PAPER = {"popularity": (100, 2228), "item_features": (54, 1342), "sequence": (3, 447), "hrnn_meta": (1, 410)}
SYNTH = {"n_users": 2_000, "n_items": 2_000, "n_events": 60_000, "n_genres": 20, "seed": 7}


class AblationError(HrnnError):
    """The ablation cannot run as asked."""


def oracle_ppl(raw_dir: Path, warehouse_con, event_ids: np.ndarray) -> dict:
    """The generator's PPL on the given warehouse events (synthetic data with truth only).

    ``truth_events.parquet`` is in the row order of ``interactions.parquet``; ingest numbers
    events in file order, so the join is checked on (user, item, timestamp) for every event.
    """
    truth = raw_dir / "truth_events.parquet"
    if not truth.is_file():
        raise AblationError(f"{raw_dir} has no truth_events.parquet (generate with write_truth=True)")
    con = warehouse_con
    rows = con.execute(
        f"""
        with src as (select row_number() over () as rn, user_id, item_id, "timestamp"
                     from read_parquet('{raw_dir / "interactions.parquet"}')),
             tr as (select row_number() over () as rn, true_logp, true_logp_user
                    from read_parquet('{truth}')),
             ev as (select unnest($ids::bigint[]) as event_id)
        select i.event_id, i.user_id = s.user_id and i.item_id = s.item_id and i."timestamp" = s."timestamp",
               tr.true_logp, tr.true_logp_user
        from ev join interactions i using (event_id)
        join src s on s.rn = i.event_id - (select min(event_id) - 1 from interactions)
        join tr on tr.rn = s.rn
        """, {"ids": [int(x) for x in event_ids]}).fetchall()
    if len(rows) != len(event_ids) or not all(r[1] for r in rows):
        raise AblationError("truth rows do not line up with the warehouse events (re-generate into a fresh dir)")
    lp = np.array([r[2] for r in rows])
    lpu = np.array([r[3] for r in rows])
    return {"oracle_ppl": float(math.exp(-lp.mean())), "oracle_ppl_without_intent": float(math.exp(-lpu.mean())),
            "n_events": len(rows)}


def run_ablation(snapshot_dir: Path, model_cfg, train_cfg, *, dataset: str = "", test_fraction: float = 0.2,
                 seed: int = 0, rows: tuple = ROWS, say: Callable[[str], None] = lambda _m: None) -> dict:
    """Fit every row's model on one user_holdout split; PPL, NDCG@10 and the paired tests."""
    from hrnn_core.evaluation.harness import evaluate_split, significance  # noqa: PLC0415
    from hrnn_core.evaluation.protocols import build_split  # noqa: PLC0415
    from hrnn_core.evaluation.splits import SnapshotData  # noqa: PLC0415

    # Table 1 measures the input signals: the rows' distributions carry no trend term (eq. 5)
    model_cfg = dataclasses.replace(model_cfg, trend_weight=0.0)  # (so none in training either)
    data = SnapshotData.load(snapshot_dir)
    split = build_split("user_holdout", data, test_fraction=test_fraction, valid_fraction=0.0, seed=seed,
                        last_item_only=True)
    say(split.describe())
    options = {}
    for name, kind, changes, _marks in rows:
        opts: dict = {"kind": kind}
        if kind in ("hrnn", "gru"):
            opts.update(model=dataclasses.replace(model_cfg, **(changes or {})), train=train_cfg)
        options[name] = opts
    results = evaluate_split(split, [r[0] for r in rows], seed=seed, model_options=options, progress=say)
    sig = significance(results, "ndcg@10", reference="hrnn_meta")
    return {
        "dataset": dataset, "protocol": "user_holdout", "protocol_description": split.describe(),
        "params": split.params, "snapshot_id": data.snapshot_id, "n_events": len(split.test),
        "n_users": split.test.n_users, "n_items": split.n_items,
        "rows": {name: {"marks": marks, "kind": kind, "model_changes": changes or {},
                        **{k: results[name].metrics.get(k) for k in ("ppl", "ndcg@10", "recall@10", "mrr@10")},
                        "fit_seconds": round(results[name].fit_seconds, 1)}
                 for name, kind, changes, marks in rows},
        "significance_ndcg@10": sig,
        "test_event_ids": [int(x) for x in split.test.target_event_id],
        "paper_ml20m_toy": PAPER,
        "model_config": dataclasses.asdict(model_cfg),  # the hrnn_meta row's; the others apply model_changes
        "train_config": {k: v for k, v in dataclasses.asdict(train_cfg).items() if k not in ("progress", "device")},
    }


def format_report(report: dict) -> str:
    lines = [f"{report['dataset']} / user_holdout (20% of users, last event as target): "
             f"{report['n_events']:,} test events, {report['n_items']:,} items"]
    head = f"{'row':<16}{'Seq User Item Fb':>18}{'PPL':>11}{'NDCG@10':>10}{'Recall@10':>11}{'paper toy/ml-20m':>18}"
    lines += [head, "-" * len(head)]
    for name, r in report["rows"].items():
        paper = PAPER.get(name)
        lines.append(f"{name:<16}{r['marks']:>18}{r['ppl']:>11.1f}{r['ndcg@10']:>10.4f}{r['recall@10']:>11.4f}"
                     f"{(f'{paper[0]} / {paper[1]}' if paper else '-'):>18}")
    if "oracle" in report:
        o = report["oracle"]
        lines.append(f"{'oracle':<16}{'generator':>18}{o['oracle_ppl']:>11.1f}   (without the session intent: "
                     f"{o['oracle_ppl_without_intent']:.1f})")
    for pair, t in report["significance_ndcg@10"].items():
        lines.append(f"  NDCG@10 {pair}: {t['mean_diff']:+.4f} (95% CI {t['ci_low']:+.4f}..{t['ci_high']:+.4f}, "
                     f"p={t['p_value']:.2g})")
    lines.append("PPL = exp(mean NLL of the target, full softmax over the catalogue; lower is better); "
                 "paper = Table 1 (toy = its synthetic data, relative; ml-20m).")
    return "\n".join(lines)


AblationPathOpt = raw_path_opt("Raw dataset folder (non-ml-100k).")


def register(app: typer.Typer) -> None:
    @app.command("ablation")
    @guard
    def ablation(
        dataset: Annotated[str, typer.Option("--dataset", help="ml-100k (fetched), synth (generated with its truth), "
                                                               "or a shared dataset name.")] = "ml-100k",
        path: AblationPathOpt = None,
        test_fraction: Annotated[float, typer.Option("--test-fraction", help="Share of users held out (paper: 0.2).")] = 0.2,
        seed: Annotated[int, typer.Option(help="Seed of the user split and of training.")] = 0,
        output: OutputOpt = None,
        data_dir: DataDirOpt = None,
        config: ConfigOpt = None,
    ) -> None:
        """Table 1: popularity, item features, sequence, full HRNN-meta (PPL, NDCG@10; user_holdout)."""
        cfg = cli_config(config, data_dir=data_dir)
        say = lambda m: typer.echo(m, err=True)  # noqa: E731
        if dataset == "synth":
            report, _ = run_synthetic(cfg, Path(cfg.paths.data_dir) / "experiments" / "ablation-synth",
                                      test_fraction=test_fraction, seed=seed, say=say)
        else:
            snap = dataset_snapshot(cfg, dataset, path)
            report = run_ablation(snap, cfg.model, cfg.train, dataset=dataset, test_fraction=test_fraction,
                                  seed=seed, say=say)
        typer.echo(format_report(report))
        if output:
            write_report(output, report)


def run_synthetic(cfg, work: Path, *, test_fraction: float = 0.2, seed: int = 0, synth_options: dict | None = None,
                  rows: tuple = ROWS, say: Callable[[str], None] = lambda _m: None) -> tuple[dict, Path]:
    """Generate the synthetic log with its truth, run the ablation, add the oracle PPL."""
    from hrnn_core.config import replace  # noqa: PLC0415
    from research import synth  # noqa: PLC0415
    from hrnn_core.data.ingest import ingest_path  # noqa: PLC0415
    from hrnn_core.data.transforms import export_snapshot  # noqa: PLC0415
    from hrnn_core.data.warehouse import connect  # noqa: PLC0415

    opts = {**SYNTH, **(synth_options or {})}
    raw = work / f"raw-{'-'.join(f'{k}{v}' for k, v in sorted(opts.items()))}"
    wcfg = replace(cfg, paths={"warehouse": raw.with_suffix(".duckdb")})
    if not (raw / "truth_events.parquet").is_file():
        synth.generate(raw, write_truth=True, **opts)
    with connect(wcfg) as con:
        ingest_path(wcfg, raw, None, con)
        snap = export_snapshot(con, wcfg).path
    report = run_ablation(snap, cfg.model, cfg.train, dataset="synth", test_fraction=test_fraction, seed=seed,
                          rows=rows, say=say)
    with connect(wcfg, read_only=True) as con:
        report["oracle"] = oracle_ppl(raw, con, np.array(report["test_event_ids"]))
    report["synth"] = opts
    return report, snap
