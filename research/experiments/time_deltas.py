"""``hrnn-research time-deltas``: one user's top-1 as the time since their last event grows
(the paper's Table 2, section 4.2).

The request step of the inference engine carries the time since the user's last event (the
time-delta control input that replaces HGRU's hierarchy, section 2.2), so the same history gives
different recommendations at ``last event + delta``. The command trains HRNN-meta on the whole
dataset with the configured (shipped) settings, or loads ``--checkpoint``; reads one user's
history from the snapshot; and prints, for each delta, the top items (seen items excluded, no
trend term) with title, genres and training popularity (share of training events), like the
paper's table.

The default user is a fixed, documented choice that does not look at the model's output: the
user with the median history length (the lower median; ties broken by owner id in string
order). A second table over *all* users says whether that user is typical: the share whose
top-1 differs from the one at delta 0, whose top-1 shares a genre with their last item, and the
mean training popularity of the top-1, per delta.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from hrnn_core.cli.options import ConfigOpt, DataDirOpt, RawPathOpt, SnapshotOpt, cli_config, guard, output_opt
from hrnn_core.errors import HrnnError
from research.experiments import dataset_snapshot, write_report

DEFAULT_DELTAS = (0.0, 60.0, 3600.0, 86400.0)  # the paper's Table 2: 0, 1 min, 1 h, 1 day
LAST_SHOWN = 5  # history items printed before the table (the paper lists five)


class TimeDeltaError(HrnnError):
    """The time-delta experiment cannot run as asked (unknown user, bad deltas...)."""


def parse_deltas(text: str) -> tuple[float, ...]:
    try:
        deltas = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise TimeDeltaError(f"--deltas must be comma-separated seconds, e.g. 0,60,3600,86400; got {text!r}") from None
    if not deltas or any(not np.isfinite(d) or d < 0 for d in deltas):
        raise TimeDeltaError(f"--deltas needs at least one finite delta >= 0 seconds, got {text!r}")
    return deltas


def median_user(history) -> str:
    """The owner with the (lower) median history length; ties broken by owner id (string order)."""
    import pyarrow.compute as pc  # noqa: PLC0415

    lengths = pc.list_value_length(history.seq["item_idx"]).to_pylist()
    ranked = sorted(zip(lengths, history.seq["owner_id"].to_pylist()))
    return ranked[(len(ranked) - 1) // 2][1]


def item_info(snapshot_dir: Path) -> dict[str, dict]:
    """item_id -> {"title", "genres"} from the snapshot's item metadata (missing fields: "")."""
    import pyarrow.parquet as pq  # noqa: PLC0415

    items = pq.read_table(Path(snapshot_dir) / "items.parquet", columns=["item_id", "categorical"]).to_pylist()
    out = {}
    for row in items:
        cat = dict(row["categorical"] or [])
        out[row["item_id"]] = {"title": cat.get("title") or "", "genres": cat.get("genres") or ""}
    return out


def _genres(text: str) -> set[str]:
    return {g for g in text.split("|") if g}


def user_table(engine, history, info: dict, user: str, deltas, top: int) -> dict:
    """The user's last events and the top ``top`` items at ``last event + delta`` for each delta."""
    events = history.events_of(user)
    if not events:
        raise TimeDeltaError(f"user {user!r} has no events in the snapshot; pick another with --user")
    state = engine.replay([(events, history.user_features(user))])[0]
    freq = engine.item_freq.double()
    share = (freq / freq.sum()).cpu().numpy()
    last_t = float(events[-1].timestamp)
    rows = []
    for d in deltas:
        for rank, (item, score) in enumerate(engine.top_k(state, top, exclude_seen=True, at_time=last_t + d), 1):
            rows.append({"delta_s": d, "rank": rank, "item_id": item, **info.get(item, {"title": "", "genres": ""}),
                         "popularity": float(share[engine.item_index[item]]), "score": score})
    last = [{"item_id": e.item_id, **info.get(e.item_id, {"title": "", "genres": ""}), "timestamp": e.timestamp,
             "event_value": e.event_value} for e in events[-LAST_SHOWN:]]
    return {"user_id": user, "n_events": len(events), "last_event_time": last_t, "last_events": last, "rows": rows}


def all_users_table(engine, history, info: dict, deltas, batch: int = 256) -> dict:
    """Per delta over every owner: top-1 differs from delta 0's, shares a genre with the last
    item (owners whose last item has genres), and the top-1's mean training popularity."""
    import torch  # noqa: PLC0415

    owners = [o for _, o in history.owners()]
    freq = engine.item_freq.double()
    share = (freq / freq.sum()).cpu().numpy()
    genres = [_genres(info.get(i, {}).get("genres", "")) for i in engine.item_ids]
    tops = np.zeros((len(owners), len(deltas)), dtype=np.int64)
    last_genres: list[set[str]] = []
    for lo in range(0, len(owners), batch):
        chunk = owners[lo:lo + batch]
        hist = [(history.events_of(o), history.user_features(o)) for o in chunk]
        states = engine.replay(hist)
        last_genres += [_genres(info.get(ev[-1].item_id, {}).get("genres", "")) for ev, _ in hist]
        for j, d in enumerate(deltas):
            scores = engine.score_many(states, at_times=[s.last_time + d for s in states]).clone()
            for b, s in enumerate(states):
                scores[b, list(s.seen)] = float("-inf")  # as top_k(exclude_seen=True)
            tops[lo:lo + len(chunk), j] = torch.argmax(scores, dim=1).cpu().numpy()
    has = np.array([bool(g) for g in last_genres])
    per_delta = []
    for j, d in enumerate(deltas):
        same = [bool(genres[t] & g) for t, g, h in zip(tops[:, j], last_genres, has) if h]
        per_delta.append({"delta_s": d, "top1_differs_from_first_delta": float(np.mean(tops[:, j] != tops[:, 0])),
                          "top1_shares_genre_with_last_item": float(np.mean(same)) if same else None,
                          "mean_top1_popularity": float(share[tops[:, j]].mean()),
                          "distinct_top1_items": int(len(np.unique(tops[:, j])))})
    return {"n_users": len(owners), "per_delta": per_delta}


def format_tables(report: dict) -> str:
    u = report["user"]
    lines = [f"user {u['user_id']} ({u['n_events']} events; {report['user_choice']}); last {len(u['last_events'])} items:"]
    lines += [f"  {e['title'] or e['item_id']}  ({e['genres']})" for e in u["last_events"]]
    head = f"{'delta_t (s)':>11}  {'#':>2}  {'item':>8}  {'title':<42}{'genres':<34}{'popularity':>11}"
    lines += ["", head, "-" * len(head)]
    for r in u["rows"]:
        lines.append(f"{r['delta_s']:>11.0f}  {r['rank']:>2}  {r['item_id']:>8}  {r['title'][:41]:<42}"
                     f"{r['genres'][:33]:<34}{r['popularity']:>11.6f}")
    a = report["all_users"]
    lines += ["", f"all {a['n_users']:,} users (top-1, seen items excluded):",
              f"{'delta_t (s)':>11}{'top-1 != at first delta':>25}{'shares genre w/ last':>22}"
              f"{'mean popularity':>17}{'distinct top-1':>16}"]
    for p in a["per_delta"]:
        g = p["top1_shares_genre_with_last_item"]
        lines.append(f"{p['delta_s']:>11.0f}{p['top1_differs_from_first_delta']:>25.1%}"
                     f"{'-' if g is None else f'{g:.1%}':>22}{p['mean_top1_popularity']:>17.6f}"
                     f"{p['distinct_top1_items']:>16}")
    lines.append("popularity = the item's share of training events.")
    return "\n".join(lines)


def _train_or_reuse(snapshot_dir: Path, data_dir: Path, model_cfg, train_cfg, say) -> Path:
    """The best checkpoint of HRNN-meta trained on the snapshot with these configs; a run with
    the same snapshot and settings under ``<data_dir>/models`` is reused (training is seeded)."""
    from hrnn_core.train.trainer import train  # noqa: PLC0415

    settings = {"model": dataclasses.asdict(model_cfg),
                "train": {k: v for k, v in dataclasses.asdict(train_cfg).items() if k not in ("progress", "device")}}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:8]
    snap_id = json.loads((snapshot_dir / "manifest.json").read_text())["snapshot_id"]
    run_dir = Path(data_dir) / "models" / f"time-deltas-{snap_id}-{digest}"
    if not (run_dir / "report.json").exists():
        say(f"train HRNN-meta on {snap_id} -> {run_dir}")
        res = train(snapshot_dir, run_dir, model_cfg, train_cfg, resume=(run_dir / "last.pt").exists())
        return res.best_checkpoint if res.best_checkpoint.exists() else res.last_checkpoint
    say(f"reusing the trained run {run_dir}")
    return run_dir / "best.pt" if (run_dir / "best.pt").exists() else run_dir / "last.pt"


def load_engine(checkpoint: Path):
    """The inference engine of ``checkpoint`` on CPU, without the eq. (5) trend term (as the paper's table)."""
    from hrnn_core.model.inference import InferenceEngine  # noqa: PLC0415

    engine = InferenceEngine.from_checkpoint(checkpoint, device="cpu")
    engine.scorer.trend_weight = 0.0  # no q(t) is given either: no term
    return engine


def run_time_deltas(snapshot_dir: Path, engine, *, checkpoint: Path | None = None, user: str | None = None,
                    deltas=DEFAULT_DELTAS, top: int = 3, dataset: str = "") -> dict:
    """Both tables for a loaded ``engine`` (``load_engine``) over the snapshot's histories."""
    from hrnn_core.serving.recommend import SnapshotHistory  # noqa: PLC0415

    history = SnapshotHistory(engine, Path(snapshot_dir))
    info = item_info(snapshot_dir)
    choice = "given with --user" if user else "default: median history length, ties by owner id"
    user = user or median_user(history)
    return {"dataset": dataset, "snapshot_id": history.snapshot_id, "checkpoint": str(checkpoint),
            "deltas_s": list(deltas), "top": top, "user_choice": choice,
            "item_meta_mix": engine.scorer.mix, "trend_weight": engine.scorer.trend_weight,
            "user": user_table(engine, history, info, user, deltas, top),
            "all_users": all_users_table(engine, history, info, deltas)}


TablesOutputOpt = output_opt("Write the tables as JSON here.")


def register(app: typer.Typer) -> None:
    @app.command("time-deltas")
    @guard
    def time_deltas(
        user: Annotated[Optional[str], typer.Option("--user", help="User id (default: the median-history user).")] = None,
        deltas: Annotated[str, typer.Option("--deltas", help="Seconds since the last event, comma-separated.")] = "0,60,3600,86400",
        checkpoint: Annotated[Optional[Path], typer.Option("--checkpoint", help="A trained HRNN-meta checkpoint (default: train, or reuse the run trained by an earlier call).")] = None,
        top: Annotated[int, typer.Option("--top", min=1, help="Items shown per delta.")] = 3,
        dataset: Annotated[str, typer.Option("--dataset", help="ml-100k (fetched) or a shared dataset (see cold-start).")] = "ml-100k",
        path: RawPathOpt = None,
        snapshot: SnapshotOpt = None,
        output: TablesOutputOpt = None,
        data_dir: DataDirOpt = None,
        config: ConfigOpt = None,
    ) -> None:
        """Table 2: a user's top items at time deltas 0, 60 s, 1 h, 1 day after their last event."""
        say = lambda m: typer.echo(m, err=True)  # noqa: E731
        cfg = cli_config(config, data_dir=data_dir)
        parsed = parse_deltas(deltas)
        snap_dir, engine = snapshot, load_engine(checkpoint) if checkpoint else None
        if snap_dir is None and engine is not None:  # the snapshot the checkpoint was trained on
            snap_id = engine.features.snapshot_id
            snap_dir = Path(cfg.paths.snapshots_dir) / snap_id
            if not (snap_dir / "manifest.json").is_file():
                raise TimeDeltaError(f"the checkpoint's snapshot {snap_id} is not under {cfg.paths.snapshots_dir}; "
                                     "give --snapshot DIR")
        if snap_dir is None:
            snap_dir = dataset_snapshot(cfg, dataset, path)
        ckpt = checkpoint or _train_or_reuse(Path(snap_dir), Path(cfg.paths.data_dir), cfg.model, cfg.train, say)
        say(f"checkpoint: {ckpt}")
        report = run_time_deltas(Path(snap_dir), engine or load_engine(ckpt), checkpoint=ckpt, user=user,
                                 deltas=parsed, top=top, dataset=dataset if snapshot is None else "")
        typer.echo(format_tables(report))
        if output:
            write_report(output, report)
