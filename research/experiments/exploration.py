"""``hrnn-research exploration``: what ``serve.exploration_weight`` buys and costs (issue 19, docs/exploration.md).

Two measurements per exploration weight (0 and a few others):

1. **Closed-loop simulation** (``simulate``) on the synthetic generator (``research.synth``),
   where every user's true taste and every item's true popularity are known. The generator's log over
   ``history_days + sim_days`` days gives the catalogue (a ``cold_items_fraction`` of items is created during
   the span: those created after the history are the *new items* of the simulation), the users and the
   history (its events before the simulation starts). Day 0's model is one full training on the history.
   Then, each simulated day and for each weight, with the same randomness for every weight (paired):

   * ``requests_per_day`` users (drawn per day) each ask once, at a drawn time of the day, for a top k
     ranked by the product's scoring path: ``hrnn_core.serving.recommend.scoring_path`` over the day's
     model and snapshot (the service's and the export's ``Recommender``, with ``Exploration`` at the weight
     under test), the user's history replayed by the engine, seen items excluded, items not created yet
     excluded by the request's ``exclude_items`` filter (a shop does not show what it does not sell yet);
   * the user clicks each shown item j with its true probability
     ``p_uj = click_scale * affinity_uj * quality_j``: ``affinity`` = the user's taste mass on the item's
     genres (the generator's), ``quality_j = rank_j ** -quality_exponent`` from its Zipf popularity rank;
     one uniform per (day, user, item) drawn before the loop decides every weight's click on the same
     (user, item, day) (common random numbers);
   * the clicks, timestamped in that day, go into that weight's own warehouse by the product's ingest; a
     snapshot is exported at the day's end and the next day's model is a warm retrain from today's
     (``train(..., init_from=...)``, ``retrain.warm_epochs``-style: ``warm_epochs`` epochs, best kept).

   Reported per weight: cumulative true reward (the sum of ``p_uj`` over every shown item) and realised
   clicks, the share of impressions that went to new items, and per new item the days from its creation
   to its 10th event (censored at the end of the simulation). Exploration's item counts are the snapshot's
   (the service would also count the day's live events; here they arrive with the next day's snapshot).

2. **NDCG@10 cost** (``ndcg_cost``) on the ``rolling`` protocol of a real dataset (ml-100k): one model fitted
   on the validation training part scores the validation period, one fitted on the training part scores the
   test frames (daily); each case is ranked by the same model's scores without and with the bonus
   (``Exploration.bonus``, ages and counts from the events before the case's daily frame), paired per event.
   Validation chooses; test is read once to report.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from hrnn_core.cli.options import ConfigOpt, DataDirOpt, cli_config, guard
from hrnn_core.errors import HrnnError
from research.experiments import dataset_snapshot, write_report

DAY = 86_400.0
WEIGHTS = (0.0, 0.5, 1.0, 1.5, 2.0, 4.0)
# the simulated world: small enough to run five weights on one core (docs/exploration.md gives the sizes)
SIM_WORLD = {"n_users": 400, "n_items": 200, "n_genres": 10, "n_events": 10_000, "days": 24.0,
             "cold_items_fraction": 0.25, "drift_amplitude": 0.0}  # the seed: one world per replicate
HISTORY_DAYS = 14.0  # the generator's events before this are the history; later ones are discarded
SIM_MODEL = {"hidden_size": 32}  # the rest: the product's ModelConfig defaults
SIM_TRAIN = {"epochs": 10, "min_epochs": 5, "patience": 3, "val_owners": 100, "threads": 1, "progress": False,
             "device": "cpu"}


class ExplorationExperimentError(HrnnError):
    """The exploration experiment cannot run with these inputs."""


# --------------------------------------------------------------------------- the closed loop


@dataclasses.dataclass(frozen=True)
class SimSettings:
    sim_days: int = 10  # simulated days after the history
    requests_per_day: int = 300  # users asking for recommendations each day (once each)
    k: int = 10  # recommendations per request
    click_scale: float = 1.0  # p_uj = min(1, click_scale * affinity_uj * quality_j)
    quality_exponent: float = 0.3  # quality_j = popularity rank_j ** -this
    warm_epochs: int = 2  # epochs of each day's warm retrain (best kept)
    item_age_days: float = 30.0  # serve.exploration_item_age_days of the simulated service (the default)
    seeds: int = 3  # replicates: replicate r is world seed r and simulation seed r (the same for every weight)


def _sim_cfg(data_dir: Path):
    from hrnn_core.config import load_config  # noqa: PLC0415

    return load_config(overrides={"paths": {"data_dir": str(data_dir)}, "train": SIM_TRAIN, "model": SIM_MODEL},
                       environ={})


def _world(work: Path, s: SimSettings, seed: int, say) -> dict:
    """Generate the world, ingest the history into a base warehouse, export day 0's snapshot and train day 0's
    model (once; reused by every weight). Returns the paths and the truth arrays."""
    import pyarrow.compute as pc  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    from research import synth  # noqa: PLC0415
    from hrnn_core.data.ingest import ingest_path  # noqa: PLC0415
    from hrnn_core.data.transforms import export_snapshot  # noqa: PLC0415
    from hrnn_core.data.warehouse import connect  # noqa: PLC0415
    from hrnn_core.train.trainer import train  # noqa: PLC0415

    cfg_s = synth.SynthConfig(**SIM_WORLD, seed=seed)
    world = synth.build_world(cfg_s)
    sim_start = float(cfg_s.start_time + HISTORY_DAYS * DAY)
    base = work / "base"
    done = base / "day0.json"
    if not done.exists():
        shutil.rmtree(base, ignore_errors=True)
        raw = base / "raw"
        synth.generate(raw, cfg_s)
        inter = pq.read_table(raw / "interactions.parquet")
        history = inter.filter(pc.less(inter["timestamp"], int(sim_start)))
        pq.write_table(history, raw / "interactions.parquet")
        (raw / "truth.json").unlink()
        cfg = _sim_cfg(base)
        with connect(cfg) as con:
            ingest_path(cfg, raw, None, con)
            snap = export_snapshot(con, cfg, as_of=sim_start)
        say(f"day 0: history of {history.num_rows:,} events; full training ...")
        result = train(snap.path, base / "train", cfg.model, cfg.train)
        best = result.best_checkpoint if result.best_checkpoint.exists() else result.last_checkpoint
        done.write_text(json.dumps({"snapshot": str(snap.path), "checkpoint": str(best),
                                    "n_history_events": history.num_rows, "epochs": len(result.history)}))
    day0 = json.loads(done.read_text())
    genres = world.item_genres.astype(np.int64)  # (n_items, 3), -1 padded
    affinity = np.where(genres[None] >= 0, world.taste[:, np.maximum(genres, 0)], 0.0).sum(axis=2)  # (U, I)
    rank = np.exp(-world.log_w0 / cfg_s.zipf_exponent)  # popularity rank 1..n
    quality = rank ** -s.quality_exponent
    return {**day0, "sim_start": sim_start, "creation": world.creation.astype(np.float64),
            "p_click": np.minimum(1.0, s.click_scale * affinity * quality[None, :]), "affinity": affinity,
            "n_users": cfg_s.n_users, "n_items": cfg_s.n_items}


def _draws(s: SimSettings, seed: int, n_users: int, n_items: int, day: int
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Day ``day``'s requesting users, their request offsets in the day (s) and the click uniforms (U, I):
    a function of (seed, day) only, so every weight sees the same users, times and luck."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(day,)))
    users = np.sort(rng.choice(n_users, size=min(s.requests_per_day, n_users), replace=False))
    offsets = rng.uniform(0.0, DAY - 3_600.0, len(users))
    return users, offsets, rng.random((n_users, n_items))


def _run_weight(work: Path, world: dict, s: SimSettings, seed: int, weight: float, say) -> dict:
    """The closed loop at one weight (resumable per day: ``work/w<weight>/state.json``)."""
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    from hrnn_core.data.ingest import ingest_path  # noqa: PLC0415
    from hrnn_core.data.transforms import export_snapshot  # noqa: PLC0415
    from hrnn_core.data.warehouse import connect  # noqa: PLC0415
    from hrnn_core.model.inference import InferenceEngine  # noqa: PLC0415
    from hrnn_core.serving.recommend import Filters, Request, scoring_path  # noqa: PLC0415
    from hrnn_core.train.trainer import train  # noqa: PLC0415

    folder = work / f"w{weight:g}"
    state_path = folder / "state.json"
    if not state_path.exists():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        shutil.copy(work / "base" / "warehouse.duckdb", folder / "warehouse.duckdb")
        state_path.write_text(json.dumps({"weight": weight, "snapshot": world["snapshot"],
                                          "checkpoint": world["checkpoint"], "days": []}))
    state = json.loads(state_path.read_text())
    cfg = _sim_cfg(folder)
    serve = dataclasses.replace(cfg.serve, exploration_weight=weight, exploration_item_age_days=s.item_age_days)
    warm_train = dataclasses.replace(cfg.train, epochs=s.warm_epochs, min_epochs=0)
    creation, p_click = world["creation"], world["p_click"]
    new_item = creation >= world["sim_start"]  # (I,) created during the simulation
    item_ids = [f"i{j}" for j in range(world["n_items"])]
    for day in range(len(state["days"]), s.sim_days):
        t0 = time.perf_counter()
        day_start = world["sim_start"] + day * DAY
        engine = InferenceEngine.from_checkpoint(state["checkpoint"], device="cpu")
        history, _, _, rec = scoring_path(serve, engine, Path(state["snapshot"]))
        users, offsets, uniforms = _draws(s, seed, world["n_users"], world["n_items"], day)
        times = day_start + offsets
        owners = [f"u{u}" for u in users]
        states = engine.replay([(history.events_of(o), history.user_features(o)) for o in owners])
        requests = [Request(st, s.k, Filters(exclude_seen=True,
                                             exclude_items=tuple(item_ids[j] for j in np.flatnonzero(creation > t))),
                            None, float(t)) for st, t in zip(states, times, strict=True)]
        recs = rec.recommend_many(requests)
        shown_u, shown_i, reasons = [], [], []
        for u, items in zip(users, recs, strict=True):
            for r in items:
                shown_u.append(u)
                shown_i.append(int(r.item_id[1:]))
                reasons.append(r.reason)
        shown_u, shown_i = np.array(shown_u, dtype=np.int64), np.array(shown_i, dtype=np.int64)
        p = p_click[shown_u, shown_i]
        click = uniforms[shown_u, shown_i] < p
        t_of = dict(zip(users.tolist(), times.tolist(), strict=True))
        cu, ci = shown_u[click], shown_i[click]
        # clicks 30-300 s after the request (distinct times within a user: a user's clicks are contiguous here,
        # at most k of them; not necessarily in rank order)
        ct = np.array([t_of[u] for u in cu.tolist()]) + 30.0 * (np.arange(len(cu)) % 10 + 1)
        per_user_reward = np.bincount(shown_u, weights=p, minlength=world["n_users"])
        day_rec = {"day": day, "impressions": len(shown_i), "expected_reward": float(p.sum()),
                   "clicks": int(click.sum()), "new_item_impressions": int(new_item[shown_i].sum()),
                   "new_item_clicks": int(new_item[ci].sum()),
                   "explored_impressions": int(sum(r == "exploration" for r in reasons)),
                   "per_user_expected_reward": per_user_reward.tolist(),
                   "clicked_items": ci.tolist()}
        if day + 1 < s.sim_days:  # tomorrow's data and model
            value = np.clip(np.rint(1.5 + 4.0 * world["affinity"][cu, ci]), 1.0, 5.0)
            raw = folder / f"raw-{day}"
            raw.mkdir(exist_ok=True)
            pq.write_table(pa.table({"user_id": [f"u{u}" for u in cu.tolist()], "item_id": [item_ids[j] for j in ci],
                                     "timestamp": pa.array(np.rint(ct).astype(np.int64)),
                                     "event_type": ["view"] * len(cu), "event_value": value}),
                           raw / "interactions.parquet")
            with connect(cfg) as con:
                ingest_path(cfg, raw, None, con)
                snap = export_snapshot(con, cfg, as_of=day_start + DAY)
            run = folder / f"train-{day + 1}"
            shutil.rmtree(run, ignore_errors=True)
            result = train(snap.path, run, cfg.model, warm_train, init_from=Path(state["checkpoint"]))
            best = result.best_checkpoint if result.best_checkpoint.exists() else result.last_checkpoint
            state["snapshot"], state["checkpoint"] = str(snap.path), str(best)
        day_rec["seconds"] = time.perf_counter() - t0
        state["days"].append(day_rec)
        state_path.write_text(json.dumps(state))
        say(f"seed {seed} weight {weight:g} day {day}: reward {day_rec['expected_reward']:.1f}, clicks {day_rec['clicks']}, "
            f"new-item impressions {day_rec['new_item_impressions']}/{day_rec['impressions']}, "
            f"explored {day_rec['explored_impressions']} ({day_rec['seconds']:.0f} s)")
    return state


def _days_to_events(state: dict, world: dict, n_events: int, s: SimSettings) -> dict:
    """Per new item: days (fractional) from its creation to the end of the simulated day of its ``n_events``-th
    event (None: not reached by the end of the simulation, censored)."""
    creation, start = world["creation"], world["sim_start"]
    counts = np.zeros(world["n_items"], dtype=np.int64)
    reached: dict[int, float] = {}
    for d in state["days"]:
        counts += np.bincount(np.asarray(d["clicked_items"], dtype=np.int64), minlength=world["n_items"])
        end = start + (d["day"] + 1) * DAY
        for j in np.flatnonzero(counts >= n_events):
            reached.setdefault(int(j), (end - creation[j]) / DAY)
    new = np.flatnonzero((creation >= start) & (creation < start + s.sim_days * DAY))
    return {f"i{j}": reached.get(int(j)) for j in new}


def simulate(work: Path, s: SimSettings, weights: tuple[float, ...], say=print) -> dict:
    """The closed loop at every weight and replicate; the per-weight summary (replicates pooled) with the paired
    test against weight 0 over (replicate, user) units."""
    from hrnn_core.evaluation.metrics import paired_test  # noqa: PLC0415

    runs = []  # per replicate: (world, {weight: state})
    for seed in range(s.seeds):
        world = _world(work / f"seed{seed}", s, seed, say)
        runs.append((world, {w: _run_weight(work / f"seed{seed}", world, s, seed, w, say) for w in weights}))

    def per_user(w):  # (replicates x users,) cumulative true reward of each simulated user
        return np.concatenate([np.sum([d["per_user_expected_reward"] for d in st[w]["days"]], axis=0)
                               for _, st in runs])

    ref = per_user(weights[0])
    out = {}
    for w in weights:
        days = [d for _, st in runs for d in st[w]["days"]]
        reach = {f"seed{r}/{j}": v for r, (world, st) in enumerate(runs)
                 for j, v in _days_to_events(st[w], world, 10, s).items()}
        reached = sorted(v for v in reach.values() if v is not None)
        n_new = len(reach)
        impressions = sum(d["impressions"] for d in days)
        by_day = [{k: sum(d[k] for d in days if d["day"] == day) for k in
                   ("impressions", "expected_reward", "clicks", "new_item_impressions", "new_item_clicks",
                    "explored_impressions")} | {"day": day} for day in range(s.sim_days)]
        out[f"{w:g}"] = {
            "weight": w,
            "cumulative_expected_reward": float(per_user(w).sum()),
            "cumulative_clicks": int(sum(d["clicks"] for d in days)),
            "impressions": impressions,
            "new_item_impression_share": sum(d["new_item_impressions"] for d in days) / max(impressions, 1),
            "explored_impression_share": sum(d["explored_impressions"] for d in days) / max(impressions, 1),
            "new_item_clicks": int(sum(d["new_item_clicks"] for d in days)),
            "new_items": n_new, "new_items_reaching_10_events": len(reached),
            # None: more than half of the new items never reached 10 events (censored at the simulation's end)
            "median_days_to_10_events": reached[(n_new - 1) // 2] if len(reached) * 2 > n_new else None,
            "mean_days_to_10_events_of_those_reaching": float(np.mean(reached)) if reached else None,
            "days_to_10_events": reach,
            "reward_vs_weight_0": paired_test(per_user(w), ref),  # paired: same users, times and uniforms
            "per_day_all_replicates": by_day,
            "seconds": sum(d["seconds"] for d in days),
        }
    return {"world": SIM_WORLD, "history_days": HISTORY_DAYS, "model": SIM_MODEL, "train": SIM_TRAIN,
            "settings": dataclasses.asdict(s), "n_history_events": [world["n_history_events"] for world, _ in runs],
            "day0_epochs": [world["epochs"] for world, _ in runs], "weights": out}


# --------------------------------------------------------------------------- the NDCG@10 cost on real data


def _frames(cases, start: float, end: float):
    """Daily frames [start + k d, ...) of ``cases`` by target time: (frame start, case indices)."""
    k = np.floor((cases.target_timestamp - start) / DAY).astype(np.int64)
    return [(start + f * DAY, np.flatnonzero(k == f)) for f in np.unique(k) if start + f * DAY < end]


def _score_weights(scorer, cases, frames, data, weights, age_days: float, catalog_item_index, folder) -> dict:
    """Per weight, per-event NDCG@10 of ``cases`` ranked by ``scorer``'s scores plus the exploration bonus of
    that weight (ages and counts from the events before each frame's start); scores are computed once."""
    from hrnn_core.evaluation.baselines.base import ScoreBatch  # noqa: PLC0415
    from hrnn_core.evaluation.metrics import Accumulator  # noqa: PLC0415
    from hrnn_core.serving.exploration import Exploration  # noqa: PLC0415

    accs = {w: Accumulator(data.n_items, ks=(10,)) for w in weights}
    owners, shares = [], {w: [] for w in weights}
    for start, idx in frames:
        before = data.timestamp < start
        explorers = {w: Exploration(catalog_item_index, data.n_items, folder, data.timestamp[before],
                                    data.item[before], w, age_days) for w in weights}
        for lo in range(0, len(idx), 256):
            sel = idx[lo:lo + 256]
            b = cases.batch(sel)
            batch = ScoreBatch(cases.sequences, b["rows"], b["pos"], b["owners"], b["target_timestamp"],
                               target_event_id=cases.target_event_id[sel])
            scores = scorer.score(batch)  # (B, n)
            owners.append(b["owners"])
            for w, ex in explorers.items():
                s = scores.clone()
                bonus = ex.bonus(s, b["target_timestamp"], [True] * len(sel)) if ex.active else None
                if bonus is not None:
                    s[:, bonus[0]] += bonus[1]
                    shares[w].append(float((bonus[1] > 0).float().sum(1).mean()))
                accs[w].add(s, b["targets"], exclude=b["exclude"], owners=b["owners"])
    return {"owners": np.concatenate(owners), "ndcg": {w: a.per_event("ndcg@10") for w, a in accs.items()},
            "young": shares}


def ndcg_cost(cfg, snapshot: Path, weights: tuple[float, ...], work: Path, say=print, test_days: int | None = None
              ) -> dict:
    """Validation and test NDCG@10 per weight on the rolling protocol (daily frames), paired against weight 0."""
    import pyarrow.parquet as pq  # noqa: PLC0415

    from hrnn_core.evaluation.harness import train_data  # noqa: PLC0415
    from hrnn_core.evaluation.hrnn_scorer import HRNNScorer  # noqa: PLC0415
    from hrnn_core.evaluation.metrics import paired_test  # noqa: PLC0415
    from research.experiments.warm_start import _rolling  # noqa: PLC0415 - the same daily rolling split

    data, split = _rolling(snapshot, 0.1)  # seen items excluded unless owners repeat items (the retrain's rule)
    items = pq.read_table(snapshot / "items.parquet", columns=["item_idx", "item_id"]).to_pydict()
    index = dict(zip(items["item_id"], items["item_idx"], strict=True))
    age = cfg.serve.exploration_item_age_days
    out = {"snapshot_id": data.snapshot_id, "protocol": split.describe(), "item_age_days": age}
    valid_start = float(split.valid.target_timestamp.min())
    parts = (("valid", "valid_train", split.valid, _frames(split.valid, valid_start, split.cut_time)),
             ("test", "train", split.test, None))
    for name, part, cases, frames in parts:
        if frames is None:  # test: each rolling frame's cases
            order = np.argsort(cases.target_timestamp, kind="stable")
            ts = cases.target_timestamp[order]
            frames = [(f.start, order[np.searchsorted(ts, f.start):np.searchsorted(ts, f.end)]) for f in split.frames]
            frames = frames[:test_days] if test_days else frames
        say(f"{name}: fitting on {part} ...")
        started = time.perf_counter()
        scorer = HRNNScorer(model=cfg.model, train=dataclasses.replace(cfg.train, progress=False),
                            device="cpu", run_dir=work / part)
        scorer.fit(train_data(split, part, 0, work / f"data-{part}"))
        fit_s = time.perf_counter() - started
        say(f"{name}: scoring {sum(len(i) for _, i in frames):,} cases in {len(frames)} daily frames ...")
        r = _score_weights(scorer, cases, frames, data, weights, age, index, snapshot)
        ref = r["ndcg"][weights[0]]
        out[name] = {"n_events": int(len(ref)), "n_frames": len(frames), "fit_seconds_shared_2core_cpu": fit_s,
                     "epochs": len(scorer.history),
                     # per weight: the mean number of items with a bonus (young, scorable) per case
                     "mean_young_items_per_case": {f"{w:g}": float(np.mean(v)) if v else 0.0
                                                   for w, v in r["young"].items()},
                     "weights": {f"{w:g}": {"ndcg@10": float(v.mean()),
                                            "vs_weight_0": paired_test(v, ref, clusters=r["owners"])
                                            if w != weights[0] else None} for w, v in r["ndcg"].items()}}
        scorer.close()
    return out


# --------------------------------------------------------------------------- the choice, the charts, the command


def choose(sim: dict, cost: dict) -> dict:
    """The rule (fixed before the numbers were read; docs/exploration.md): the largest weight whose costs are
    within noise on both sides: its validation NDCG@10 difference to weight 0 on the real data has a 95 %
    interval that reaches 0, and its simulated cumulative true reward is not below weight 0's (the paired
    interval over users reaches 0 or lies above it). Test frames are not read here."""
    ok = []
    for key, v in sim["weights"].items():
        w = v["weight"]
        if w == 0:
            continue
        val = cost["valid"]["weights"][key]["vs_weight_0"]
        rew = v["reward_vs_weight_0"]
        if val["ci_high"] >= 0 and rew["ci_high"] >= 0:
            ok.append(w)
    return {"rule": choose.__doc__.split("The rule")[1].strip(), "eligible": ok, "chosen": max(ok, default=0.0)}


def charts(report: dict, folder: Path) -> list[Path]:
    """One PNG per figure: cumulative reward per day, new items' impression share, days to 10 events, NDCG cost."""
    from matplotlib.figure import Figure  # noqa: PLC0415

    sim, paths = report["simulation"]["weights"], []
    keys = list(sim)

    def save(fig, name):
        fig.tight_layout()
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        paths.append(path)

    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    ref = np.cumsum([d["expected_reward"] for d in sim[keys[0]]["per_day_all_replicates"]])
    for k in keys:
        days = sim[k]["per_day_all_replicates"]
        gain = np.cumsum([d["expected_reward"] for d in days]) / ref - 1.0
        ax.plot([d["day"] for d in days], 100 * gain, "o-", label=f"weight {k}")
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xlabel("simulated day")
    ax.set_ylabel(f"cumulative true reward vs weight {keys[0]} (%)")
    ax.set_title("closed loop: cumulative true reward (all replicates)")
    ax.legend()
    save(fig, "exploration_reward.png")

    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for k in keys:
        days = sim[k]["per_day_all_replicates"]
        ax.plot([d["day"] for d in days], [d["new_item_impressions"] / max(d["impressions"], 1) for d in days], "o-",
                label=f"weight {k}")
    ax.set_xlabel("simulated day")
    ax.set_ylabel("share of impressions on new items")
    ax.set_title("closed loop: new items' share of impressions")
    ax.legend()
    save(fig, "exploration_new_item_share.png")

    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for k in keys:
        vals = sorted(v for v in sim[k]["days_to_10_events"].values() if v is not None)
        n = sim[k]["new_items"]
        ax.step([0.0, *vals], [0.0, *(np.arange(1, len(vals) + 1) / max(n, 1))], where="post", label=f"weight {k}")
    ax.set_xlabel("days since the item's creation")
    ax.set_ylabel("share of new items with >= 10 events")
    ax.set_title("closed loop: how fast new items collect their first 10 events")
    ax.legend()
    save(fig, "exploration_days_to_10.png")

    cost = report.get("ndcg_cost")
    if cost:
        fig = Figure(figsize=(7, 4))
        ax = fig.subplots()
        for part, style in (("valid", "o-"), ("test", "s--")):
            if part not in cost:
                continue
            ws = cost[part]["weights"]
            xs = [float(k) for k in ws]
            ax.plot(xs, [ws[k]["ndcg@10"] for k in ws], style, label=f"{part} ({cost[part]['n_events']:,} events)")
        ax.set_xlabel("exploration weight")
        ax.set_ylabel("NDCG@10")
        ax.set_title(f"{report['dataset']} rolling (daily frames): NDCG@10 with the bonus")
        ax.legend()
        save(fig, "exploration_ndcg_cost.png")
    return paths


def exploration_command(
    work: Annotated[Path, typer.Option(help="Work folder: the simulation's warehouses, snapshots, trainings (resumable).")],
    output: Annotated[Path, typer.Option(help="Report JSON.")],
    charts_dir: Annotated[Path, typer.Option(help="Folder of the PNG charts.")] = Path("docs/evaluation"),
    weights: Annotated[str, typer.Option(help="Exploration weights, comma-separated; the first is the reference (0).")]
    = ",".join(f"{w:g}" for w in WEIGHTS),
    sim_days: Annotated[int, typer.Option(help="Simulated days.")] = 10,
    seeds: Annotated[int, typer.Option(help="Replicates of the simulation (world and randomness seeds 0..n-1).")] = 3,
    dataset: Annotated[str, typer.Option(help="Real dataset of the NDCG@10 cost (ml-100k; 'none' to skip).")] = "ml-100k",
    test_days: Annotated[int, typer.Option(help="Test frames (days) scored for the NDCG cost (0: all).")] = 0,
    path: Annotated[Optional[Path], typer.Option(help="Raw dataset folder (datasets other than ml-100k).")] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Closed-loop simulation of exploration on synthetic data, and its NDCG@10 cost on real data; the choice."""
    ws = tuple(float(x) for x in weights.split(","))
    if not ws or ws[0] != 0.0 or sim_days < 2:
        raise ExplorationExperimentError("--weights must start with 0 (the reference) and --sim-days be >= 2")
    say = lambda m: typer.echo(m, err=True)  # noqa: E731
    import torch  # noqa: PLC0415

    torch.set_num_threads(1)  # one core: the measurement runs beside other jobs
    report: dict = {"weights": ws, "dataset": dataset}
    sim_path = work / "simulation.json"
    if not sim_path.exists():
        sim_path.parent.mkdir(parents=True, exist_ok=True)
        sim_path.write_text(json.dumps(simulate(work / "sim", SimSettings(sim_days=sim_days, seeds=seeds), ws, say), default=float))
    report["simulation"] = json.loads(sim_path.read_text())
    if dataset != "none":
        cost_path = work / f"ndcg_cost_{dataset}.json"
        if not cost_path.exists():
            cfg = cli_config(config, None, data_dir)
            snap = dataset_snapshot(cfg, dataset, path)
            cost_path.write_text(json.dumps(ndcg_cost(cfg, snap, ws, work / f"cost-{dataset}", say, test_days or None),
                                            default=float))
        report["ndcg_cost"] = json.loads(cost_path.read_text())
        report["choice"] = choose(report["simulation"], report["ndcg_cost"])
    write_report(output, report)
    for p in charts(report, charts_dir):
        typer.echo(f"chart: {p}")
    for k, v in report["simulation"]["weights"].items():
        line = (f"weight {k}: reward {v['cumulative_expected_reward']:.1f} "
                f"({v['reward_vs_weight_0']['mean_diff']:+.3f} per user), "
                f"clicks {v['cumulative_clicks']}, new-item share {v['new_item_impression_share']:.3f}, "
                f"new items at 10 events {v['new_items_reaching_10_events']}/{v['new_items']}")
        if "ndcg_cost" in report:
            line += f", valid NDCG@10 {report['ndcg_cost']['valid']['weights'][k]['ndcg@10']:.4f}"
        typer.echo(line)
    if "choice" in report:
        typer.echo(f"chosen default: {report['choice']['chosen']:g} (eligible: {report['choice']['eligible']})")


def register(app: typer.Typer) -> None:
    app.command("exploration")(guard(exploration_command))
