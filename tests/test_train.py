"""Training loop on a tiny synthetic snapshot: batching, checkpoints, resume, errors, time deltas."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from hrnn_core.model.steps import gather_steps
from hrnn_core.train import trainer as train_mod
from hrnn_core.train import validation as validation_mod
from hrnn_core.model.checkpoint import load_checkpoint
from hrnn_core.config import ModelConfig, TrainConfig, load_config
from research import synth
from hrnn_core.model.features import FeatureSpace
from hrnn_core.model.losses import LossOut
from research.synth import synthetic_snapshot
from hrnn_core.train.trainer import NonFiniteLossError, TrainError, owner_windows, prepare_data, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = ModelConfig(hidden_size=16, field_dim=8, input_size=16)
FAST = TrainConfig(epochs=2, batch_size=8, bptt=8, progress=False, val_owners=20, warmup_steps=5)

@pytest.fixture(scope="module")
def snap(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data dir with a warehouse, snapshot dir): 60 users, 2,500 events, impressions on half."""
    from hrnn_core.data.ingest import ingest_path
    from hrnn_core.data.transforms import export_snapshot
    from hrnn_core.data.warehouse import connect

    d = tmp_path_factory.mktemp("train_data")
    paths = synth.generate(d / "raw", n_users=60, n_items=80, n_events=2_500, n_genres=5, seed=1)
    t = pq.read_table(paths["interactions"])
    rng = np.random.default_rng(0)
    imp = ["|".join([f"i{j}" for j in rng.integers(0, 80, 3)] + ["unknown"]) if rng.random() < 0.5 else None
           for _ in range(len(t))]
    pq.write_table(t.append_column("impression", pa.array(imp, pa.string())), paths["interactions"])
    cfg = load_config(overrides={"paths": {"data_dir": str(d)}}, environ={})
    with connect(cfg) as con:
        ingest_path(cfg, d / "raw", None, con)
        snapshot = export_snapshot(con, cfg)
    return d, snapshot.path


def test_owner_windows_cover_every_event_once_in_order_one_owner_per_row() -> None:
    segments = np.array([[0, 5], [5, 6], [6, 20], [20, 23], [30, 31], [31, 33], [33, 34]])
    seen, starts, prev = [], [], None
    by_slot: dict[int, list[int]] = {}
    windows = list(owner_windows(segments, batch_size=2, bptt=4))
    for w in windows:
        assert w.idx.shape[0] == len(w.lengths) == len(w.reset) == len(w.slot) == len(w.carry)
        assert w.idx.shape[1] == w.lengths.max() <= 4
        assert (w.lengths >= 1).all() and int(w.lengths.sum()) <= 2 * 4 or len(w.lengths) == 1  # the event budget
        for r, row in enumerate(w.idx):
            valid = row[row >= 0]
            assert len(valid) == w.lengths[r] and (row[: len(valid)] == valid).all()  # padding only at the end
            assert (np.diff(valid) == 1).all()
            seg = [s for s in segments if s[0] <= valid[0] < s[1]][0]
            assert valid[-1] < seg[1]  # one owner per row
            if w.reset[r]:
                assert valid[0] == seg[0] and w.carry[r] == -1 and w.slot[r] not in by_slot
                starts.append(int(valid[0]))
            else:  # a continuing row follows its own previous row, keeping its slot id
                assert prev is not None and prev.slot[w.carry[r]] == w.slot[r]
                assert by_slot[int(w.slot[r])][-1] + 1 == valid[0]
            by_slot.setdefault(int(w.slot[r]), []).extend(valid.tolist())
            seen.extend(valid.tolist())
        assert (w.reset == (w.carry < 0)).all() and (np.argsort(w.reset, kind="stable") == np.arange(len(w.reset))).all()
        prev = w
    assert sorted(seen) == list(range(23)) + [30, 31, 32, 33]
    assert starts == [0, 5, 6, 20, 30, 31, 33]  # each owner starts once, in the given order
    short = list(owner_windows(np.array([[i, i + 2] for i in range(0, 40, 2)]), batch_size=2, bptt=4))
    assert [len(w.lengths) for w in short] == [4] * 5  # short owners (sessions) fill a window's events


def test_prepare_data_caps_histories_and_holds_out_last_events(snap) -> None:
    _, path = snap
    data = prepare_data(path, SMALL, TrainConfig(max_len_percentile=0.5, val_owners=10))
    lengths = np.diff(data.events.owner_start)
    assert data.max_len == int(np.ceil(np.quantile(lengths, 0.5)))
    tr, va = data.train_segments, data.val_segments
    assert ((tr[:, 1] - tr[:, 0]) <= data.max_len).all() and len(va) == 10
    ends = data.events.owner_start[1:]
    assert set(va[:, 1]) <= set(ends)  # the most recent events are kept
    held_out = set((va[:, 1] - 1).tolist())
    trained = {e for s, t in tr.tolist() for e in range(s, t)}
    assert not held_out & trained
    imp = data.events.impressions
    assert (imp >= 0).any() and imp.shape[1] == 20
    assert (imp >= 0).sum(1).max() <= 3  # "unknown" ids are dropped


def test_prepare_data_holds_out_the_snapshots_own_validation_targets(snap, tmp_path) -> None:
    """holdout.parquet (leave_one_out's train_valid): all named rows' last events leave training,
    up to val_owners of them validate, and no other event is held out."""
    import shutil

    _, path = snap
    folder = tmp_path / "snap"
    shutil.copytree(path, folder)
    n_owners = pq.read_table(folder / "sequences.parquet").num_rows
    rows = np.arange(0, n_owners, 3)
    pq.write_table(pa.table({"row": pa.array(rows, pa.int64())}), folder / "holdout.parquet")
    data = prepare_data(folder, SMALL, TrainConfig(val_owners=5))
    starts, ends = data.events.owner_start[:-1], data.events.owner_start[1:]
    trained = {e for s, t in data.train_segments.tolist() for e in range(s, t)}
    held = set((ends[rows] - 1).tolist())
    assert not held & trained
    kept = {e for a, b in zip(np.maximum(starts, ends - data.max_len), ends, strict=True) for e in range(a, b)}
    assert trained | held == kept  # nothing else is held out (max_len caps the oldest events)
    assert len(data.val_segments) == 5 and set((data.val_segments[:, 1] - 1).tolist()) <= held
    pq.write_table(pa.table({"row": pa.array([n_owners], pa.int64())}), folder / "holdout.parquet")
    with pytest.raises(TrainError, match="holdout.parquet"):
        prepare_data(folder, SMALL, TrainConfig())


def test_leave_one_out_hrnn_trains_on_train_and_stops_on_the_validation_targets(snap, monkeypatch) -> None:
    """The harness gives HRNN-meta leave_one_out's train + validation targets, held out: it trains
    on exactly the protocol's training events and validates on (a sample of) its validation cases."""
    from hrnn_core.evaluation.harness import evaluate_split
    from hrnn_core.evaluation.protocols import build_split
    from hrnn_core.evaluation.splits import SnapshotData

    _, path = snap
    split = build_split("leave_one_out", SnapshotData.load(path))
    cfg = dataclasses.replace(FAST, epochs=1, max_len_percentile=1.0)
    seen: dict = {}
    real = train_mod.train

    def spy(snapshot_dir, *args, **kwargs):
        seen["holdout"] = (Path(snapshot_dir) / "holdout.parquet").exists()
        seen["data"] = prepare_data(snapshot_dir, SMALL, cfg)
        return real(snapshot_dir, *args, **kwargs)

    monkeypatch.setattr(train_mod, "train", spy)
    evaluate_split(split, ["hrnn"], model_options={"hrnn": {"model": SMALL, "train": cfg}})
    assert seen["holdout"]
    data = seen["data"]
    trained = int((data.train_segments[:, 1] - data.train_segments[:, 0]).sum())
    assert trained == int(split.item_frequency.sum())  # every training event, nothing else
    val_targets = data.events.target[torch.from_numpy(data.val_segments[:, 1] - 1)].numpy()
    valid_by_row = dict(zip(split.valid.row.tolist(), split.valid.target.tolist(), strict=True))
    assert len(val_targets) == cfg.val_owners
    owners = np.searchsorted(data.events.owner_start, data.val_segments[:, 1] - 1, side="right") - 1
    assert [valid_by_row[int(o)] for o in owners] == val_targets.tolist()


def test_seen_pairs_follow_each_rows_owner() -> None:
    seen = torch.zeros(2, 6, dtype=torch.bool)
    seen[0, 2] = True  # row 0's owner had item 2 before this window
    target = torch.tensor([[1, 2, 1, 4], [5, 0, 0, 1]])
    valid = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    pos, items, carry = train_mod.seen_pairs(seen, target, valid)
    got = [sorted({i for p, i in zip(pos.tolist(), items.tolist()) if p == k}) for k in range(6)]  # 6 real events
    assert got == [[2], [1, 2], [1, 2], [1, 2], [], [5]]  # padding (t >= 2 of row 1) adds nothing
    assert carry[0].nonzero().flatten().tolist() == [1, 2, 4] and carry[1].nonzero().flatten().tolist() == [0, 5]


def test_carried_windows_give_each_owner_its_whole_sequences_states(snap) -> None:
    """Training's windows with the carried state (``_carry``: continuing rows found by slot id, new owners
    from their initial state) give every event the state of its owner's whole sequence in one call."""
    _, path = snap
    data = prepare_data(path, SMALL, FAST)
    torch.manual_seed(0)
    model = train_mod.HRNNMeta(dataclasses.replace(SMALL, dropout=0.0), data.features, data.item_cat,
                               data.item_num).eval()
    got = torch.zeros(len(data.events.target), SMALL.hidden_size)
    prev = hidden = None
    with torch.no_grad():
        for w in owner_windows(data.train_segments[::-1].copy(), batch_size=3, bptt=5):
            hidden, _ = train_mod._carry(prev, w, hidden, None)
            out, hidden = model(train_mod.gather_inputs(data, w), hidden)
            got[torch.from_numpy(w.idx[w.idx >= 0])] = out[torch.from_numpy(w.idx >= 0)]
            prev = w
        for a, b in data.train_segments[:5].tolist():
            idx = torch.arange(a, b)[None]
            whole, _ = model(gather_steps(data.events, idx, data.event_user[[a]]))
            torch.testing.assert_close(got[a:b], whole[0], atol=1e-5, rtol=1e-5)


def test_exclude_seen_follows_the_training_repeat_share(snap, monkeypatch) -> None:
    _, path = snap
    data = prepare_data(path, SMALL, FAST)
    expected = []
    for a, b in data.train_segments.tolist():
        items = data.events.target[a:b].tolist()
        expected += [items[i] in items[:i] for i in range(len(items))]
    share = train_mod.repeat_share(data)
    assert share == pytest.approx(np.mean(expected)) and share > 0.01  # the synthetic owners repeat items
    assert train_mod.resolve_exclude_seen(FAST, data) == (False, share)  # off where owners repeat items
    monkeypatch.setattr(train_mod, "EXCLUDE_SEEN_MAX_REPEATS", 1.0)
    assert train_mod.resolve_exclude_seen(FAST, data)[0]  # on below the threshold ...
    assert not train_mod.resolve_exclude_seen(dataclasses.replace(FAST, output="sampled"), data)[0]  # ... if dense


def test_exclude_seen_training_and_validation(snap, tmp_path, monkeypatch) -> None:
    """Where owners never repeat an item, seen items leave the softmax (so the loss can only fall) and
    the validation ranking, never the target."""
    _, path = snap
    steps = []
    real_loss = train_mod.dense_softmax_loss

    def spy(h, w, b, target, weight=None, base=None, base_weight=1.0, mask=None):
        rows, items = mask if mask is not None else (torch.zeros(0, dtype=torch.long),) * 2
        steps.append((len(rows), bool((items != target[rows]).all())))  # pairs set to -inf, never a target
        return real_loss(h, w, b, target, weight, base, base_weight, mask)

    monkeypatch.setattr(train_mod, "dense_softmax_loss", spy)
    monkeypatch.setattr(train_mod, "EXCLUDE_SEEN_MAX_REPEATS", 1.0)  # the synthetic owners repeat items
    cfg = dataclasses.replace(FAST, epochs=1)
    res = train(path, tmp_path / "run", SMALL, cfg)
    assert np.isfinite(res.history[0]["train_loss"]) and np.isfinite(res.history[0]["val_loss"])
    assert all(ok for _, ok in steps) and sum(n for n, _ in steps) > 0  # seen items masked, targets never
    assert json.loads(res.report.read_text())["exclude_seen"] is True
    steps.clear()
    monkeypatch.setattr(train_mod, "EXCLUDE_SEEN_MAX_REPEATS", 0.01)
    plain_run = train(path, tmp_path / "plain", SMALL, cfg)
    assert steps and sum(n for n, _ in steps) == 0
    assert json.loads(plain_run.report.read_text())["exclude_seen"] is False
    ck = load_checkpoint(res.last_checkpoint, torch.device("cpu"))
    data = prepare_data(path, SMALL, cfg)
    plain = train_mod.evaluate(ck.model, data, data.val_segments, torch.device("cpu"))
    masked = train_mod.evaluate(ck.model, data, data.val_segments, torch.device("cpu"), exclude_seen=True)
    assert masked["val_loss"] < plain["val_loss"] and masked["hit@10"] >= plain["hit@10"]


def test_train_writes_checkpoints_and_report_and_round_trips(snap, tmp_path) -> None:
    _, path = snap
    res = train(path, tmp_path / "run", SMALL, FAST)
    assert len(res.history) == 2 and res.best_checkpoint.exists() and res.last_checkpoint.exists()
    report = json.loads(res.report.read_text())
    assert report["epochs"][0]["events_per_s"] > 0 and "ndcg@10" in report["epochs"][-1]
    assert (tmp_path / "run" / "loss_curve.png").stat().st_size > 1000
    raw = torch.load(res.last_checkpoint, weights_only=True)  # plain tensors and primitives only
    assert raw["snapshot_id"] == path.name and len(raw["features"]["item_ids"]) == raw["item_freq"].numel()
    ck = load_checkpoint(res.last_checkpoint)
    fs = FeatureSpace.fit(path, SMALL)
    assert ck.features == fs and ck.model_config == SMALL and ck.train_config == dataclasses.replace(FAST, output="dense")  # "auto" resolved
    state = ck.model.state_dict()
    assert set(state) == set(raw["model_state"])
    for k, v in raw["model_state"].items():
        assert torch.equal(state[k], v), k
    h = torch.randn(3, SMALL.hidden_size)
    again = load_checkpoint(res.last_checkpoint)
    torch.testing.assert_close(again.model.scores(h, None, 0.5), ck.model.scores(h, None, 0.5))


def _final_state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model_state"]


def test_resume_after_interruption_gives_the_same_weights(snap, tmp_path) -> None:
    _, path = snap
    cfg = TrainConfig(epochs=3, batch_size=8, bptt=8, progress=False, val_owners=20, warmup_steps=5,
                      output="sampled", n_negatives=32, patience=10)
    model_cfg = ModelConfig(hidden_size=16, field_dim=8, input_size=16, dropout=0.2)
    full = train(path, tmp_path / "full", model_cfg, cfg)

    def kill(epoch: int, metrics: dict) -> None:
        if epoch == 0:
            raise KeyboardInterrupt("simulated kill after the first epoch")

    with pytest.raises(KeyboardInterrupt):
        train(path, tmp_path / "killed", model_cfg, cfg, on_epoch_end=kill)
    with pytest.raises(TrainError, match="resume"):
        train(path, tmp_path / "killed", model_cfg, cfg)
    resumed = train(path, tmp_path / "killed", model_cfg, cfg, resume=True)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    a, b = _final_state(full.last_checkpoint), _final_state(resumed.last_checkpoint)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed.history[-1]["val_loss"] == full.history[-1]["val_loss"]


def test_sampled_output_uses_impressions_as_negatives(snap, tmp_path, monkeypatch) -> None:
    _, path = snap
    seen = []
    real = train_mod.sampled_softmax_loss

    def spy(h, w, b, cand, log_q, weight=None, extra_scores=None, extra_items=None):
        seen.append(((len(h), len(w)), None if extra_items is None else int((extra_items >= 0).sum())))
        return real(h, w, b, cand, log_q, weight, extra_scores, extra_items)

    monkeypatch.setattr(train_mod, "sampled_softmax_loss", spy)
    cfg = TrainConfig(epochs=1, batch_size=8, bptt=8, progress=False, output="sampled", n_negatives=16,
                      event_type_weights={"buy": 3.0}, event_value_weight=0.5)
    res = train(path, tmp_path / "run", SMALL, cfg)
    assert np.isfinite(res.history[0]["train_loss"])
    n = seen[0][0][0]
    assert seen[0][0] == (n, n + 16)  # one N x (N + n_neg) matrix
    assert any(k for _, k in seen)


def test_nan_loss_raises(snap, tmp_path, monkeypatch) -> None:
    _, path = snap
    nan = torch.tensor(float("nan"), requires_grad=True)
    monkeypatch.setattr(train_mod, "dense_softmax_loss", lambda h, w, b, t, *a: LossOut(nan * h.sum(), t.float()))
    with pytest.raises(NonFiniteLossError, match="lower train.lr"):
        train(path, tmp_path / "run", SMALL, FAST)


def test_dense_output_refuses_huge_score_matrices(snap, tmp_path) -> None:
    _, path = snap
    with pytest.raises(TrainError, match="sampled"):
        train(path, tmp_path / "run", SMALL, TrainConfig(max_dense_logits=1000, progress=False))


def test_early_stopping(snap, tmp_path, monkeypatch) -> None:
    _, path = snap
    calls = []

    def worse_each_epoch(*args, **kwargs):
        calls.append(1)
        return {"val_loss": float(len(calls)), "ndcg@10": 0.0}

    monkeypatch.setattr(validation_mod, "evaluate", worse_each_epoch)  # what validate() calls
    cfg = TrainConfig(epochs=10, patience=2, batch_size=8, bptt=8, progress=False, min_epochs=0)
    res = train(path, tmp_path / "run", SMALL, cfg)
    assert res.stopped_early and len(res.history) == 3
    assert torch.load(res.best_checkpoint, weights_only=True)["epoch"] == 0
    calls.clear()  # min_epochs: no stop before epoch 5, then the patience rule again
    res = train(path, tmp_path / "run5", SMALL, dataclasses.replace(cfg, min_epochs=5))
    assert res.stopped_early and len(res.history) == 5
    assert torch.load(res.best_checkpoint, weights_only=True)["epoch"] == 0


def test_cli_train(snap, tmp_path) -> None:
    from hrnn_core.cli.main import app

    d, _ = snap
    conf = tmp_path / "c.toml"
    conf.write_text("[model]\nhidden_size = 16\n[train]\nepochs = 1\nbatch_size = 8\nprogress = false\n")
    result = CliRunner().invoke(app, ["train", "--data-dir", str(d), "--config", str(conf)])
    assert result.exit_code == 0, result.output
    runs = list((d / "models").iterdir())
    assert len(runs) == 1 and (runs[0] / "best.pt").exists() and (runs[0] / "report.json").exists()
    again = CliRunner().invoke(app, ["train", "--data-dir", str(d), "--config", str(conf)])
    assert again.exit_code == 2 and "--resume" in again.output


def test_time_delta_input_lowers_ppl_and_moves_top1(tmp_path_factory) -> None:
    """Sessions with one intent each, new intent after long gaps: the time delta tells the model
    when the intent may have switched (section 2.2, Table 2)."""
    from hrnn_core.model.inference import InferenceEngine

    path = synthetic_snapshot(
        tmp_path_factory.mktemp("sessions"), n_users=200, n_items=60, n_events=12_000, n_genres=4, seed=3,
        drift_amplitude=0.0, epsilon=0.02, taste_concentration=50.0, segment_boost=0.0, age_effect=0.0,
        mean_session_events=5.0)
    out = tmp_path_factory.mktemp("runs")
    cfg = TrainConfig(epochs=8, batch_size=16, bptt=16, lr=1e-2, warmup_steps=10, item_meta_mix=0.0,
                      val_owners=200, patience=100, progress=False)
    ppl = {}
    for use in (True, False):
        mcfg = ModelConfig(hidden_size=32, field_dim=16, input_size=32, dropout=0.0, use_time_delta=use)
        res = train(path, out / str(use), mcfg, cfg)
        ppl[use] = min(h["train_ppl"] for h in res.history[-3:]), min(h["val_ppl"] for h in res.history[-3:])
    assert ppl[True][0] < 0.93 * ppl[False][0], ppl
    assert ppl[True][1] < ppl[False][1], ppl

    engine = InferenceEngine.from_checkpoint(out / "True" / "best.pt", device="cpu")
    seq = pq.read_table(path / "sequences.parquet").slice(0, 30).to_pylist()
    genres = {r["item_id"]: set(dict(r["categorical"])["genres"].split("|"))
              for r in pq.read_table(path / "items.parquet").to_pylist()}
    changed, short_mass, long_mass = 0, [], []
    for row in seq:
        events = [train_mod_event(engine, row, k) for k in range(min(row["n_events"], 20))]
        state = engine.replay([(events, None)])[0]
        last = events[-1]
        same = torch.tensor([bool(genres[i] & genres[last.item_id]) for i in engine.item_ids])
        p_short = torch.softmax(engine.score(state, at_time=last.timestamp + 30), 0)
        p_long = torch.softmax(engine.score(state, at_time=last.timestamp + 2 * 86_400), 0)
        short_mass.append(float(p_short[same].sum()))
        long_mass.append(float(p_long[same].sum()))
        top = [engine.top_k(state, 1, exclude_seen=False, at_time=last.timestamp + dt)[0][0] for dt in (30, 2 * 86_400)]
        changed += top[0] != top[1]
    assert np.mean(short_mass) > np.mean(long_mass) + 0.15, (np.mean(short_mass), np.mean(long_mass))
    assert changed >= 5, changed


def scored(model, data, mix: float, trend, exclude_seen: bool = False) -> dict:
    """``train.evaluate`` through the one scoring function at lambda ``mix`` with ``trend`` (a TrainTrend)."""
    from hrnn_core.model.scoring import CatalogueScorer

    scorer = CatalogueScorer(model, data.events.item_freq, mix, trend.popularity if trend else None,
                             trend.weight if trend else 0.0)
    return train_mod.evaluate(model, data, data.val_segments, torch.device("cpu"), scorer,
                              trend.times if trend else None, exclude_seen=exclude_seen)


def train_mod_event(engine, row: dict, k: int):
    from hrnn_core.model.inference import Event

    ctx = row["contexts"][k]
    return Event(engine.item_ids[row["item_idx"][k]], row["timestamps"][k], row["event_types"][k],
                 row["event_values"][k], dict(ctx) if ctx else None)


def test_sampled_step_on_a_million_items_never_builds_a_batch_by_catalog_matrix() -> None:
    """The sampled output's cost depends on B x (B + n_neg), not on the catalog size."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from hrnn_core.model.features import FieldGroup
    from hrnn_core.model.losses import sampled_softmax_loss
    from hrnn_core.model.network import HRNNMeta, StepInputs
    from hrnn_core.model.sampler import AliasSampler

    n_items, b, t, n_neg = 1_000_000, 8, 8, 64
    groups = dict(num_fields=[], num_mean=[], num_std=[], clip=5.0)
    fs = FeatureSpace(
        item_ids=[str(i) for i in range(n_items)], event_types=["view"], value_mean=0.0, value_std=1.0,
        users=FieldGroup([], [], widths=[], multi_valued=True, **groups),
        items=FieldGroup(["genres"], [["a", "b", "c"]], widths=[2], multi_valued=True, **groups),
        context=FieldGroup([], [], widths=[], multi_valued=False, **groups), time_delta_buckets=8,
        time_delta_log_base=2.0, snapshot_id="big")
    cfg = ModelConfig(hidden_size=8, field_dim=4, input_size=8)
    model = HRNNMeta(cfg, fs, torch.randint(0, 4, (n_items, 2)).int(), torch.zeros(n_items, 0))
    opts = train_mod._optimizers(model, TrainConfig(output="sampled"))
    sampler = AliasSampler(np.random.default_rng(0).zipf(1.3, n_items) % 1000)
    g = torch.Generator().manual_seed(0)
    x = StepInputs(prev_item=torch.randint(0, n_items, (b, t), generator=g), prev_type=torch.zeros(b, t, dtype=torch.long),
                   prev_value=torch.zeros(b, t, 2), time_bucket=torch.randint(0, 8, (b, t), generator=g),
                   context=torch.zeros(b, t, 0, dtype=torch.long), user_cat=torch.zeros(b, t, 0, dtype=torch.int32),
                   user_num=torch.zeros(b, t, 0), reset=torch.zeros(b, dtype=torch.bool))
    target = torch.randint(0, n_items, (b * t,), generator=g)

    class LargestTensor(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for o in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(o, torch.Tensor) and not o.is_sparse:
                    self.largest = max(self.largest, o.numel())
            return out

    before = model.item_w.weight.detach().clone()
    with LargestTensor() as mode:
        out, _ = model(x)
        h = out.reshape(-1, cfg.hidden_size)
        neg, neg_log_q = sampler.draw(n_neg)
        cand = torch.cat([target, neg])
        loss = sampled_softmax_loss(h, *model.item_vectors(cand, 0.5), cand, torch.cat([sampler.log_q[target], neg_log_q])).loss
        loss.backward()
        train_mod._clip_grad_norm(list(model.parameters()), 1.0)
        for opt in opts:
            opt.step()
    assert model.item_w.weight.grad.is_sparse  # only the batch's rows are touched
    # the largest tensors are parameter-sized (n_items x H: tables, optimizer state), never (B T) x n_items
    assert mode.largest <= n_items * cfg.hidden_size < b * t * n_items, mode.largest
    changed = (model.item_w.weight.detach() != before).any(1).nonzero().flatten()
    assert set(changed.tolist()) <= set(cand.tolist())


def test_evaluate_trend_term_is_an_item_bias_when_the_window_holds_everything(snap, tmp_path) -> None:
    """evaluate(trend=(w, q, times)) adds w * log q_j(t) to every score: with every event long before the
    targets' hour, q is the same for all of them, so it equals the model with w * log q added to its bias."""
    from hrnn_core.model.trend import WindowedPopularity
    from hrnn_core.train.trainer import evaluate

    _, path = snap
    cfg = dataclasses.replace(SMALL, use_item_meta=False, inference_item_meta_mix=0.0)
    res = train(path, tmp_path / "run", cfg, FAST)
    model = load_checkpoint(res.best_checkpoint).model
    data = prepare_data(path, cfg, FAST)
    items = data.events.target.numpy()
    pop = WindowedPopularity(np.zeros(len(items)), items, model.n_items, window_seconds=1e9, bucket_seconds=3600.0)
    times = np.full(len(items), 10 * 3600.0)
    cpu = torch.device("cpu")
    with_trend = scored(model, data, 0.0, train_mod.TrainTrend(0.7, pop, times))
    assert with_trend["val_loss"] != pytest.approx(evaluate(model, data, data.val_segments, cpu)["val_loss"])
    with torch.no_grad():
        model.item_b.weight[: model.n_items, 0] += torch.from_numpy(0.7 * pop.log_q(10 * 3600.0)).float()
    as_bias = evaluate(model, data, data.val_segments, cpu)
    for key in ("val_loss", "ndcg@10", "hit@10"):
        assert with_trend[key] == pytest.approx(as_bias[key], rel=1e-5, abs=1e-6)


def test_training_adds_the_trend_term_to_every_dense_score_and_to_validation(snap, tmp_path, monkeypatch) -> None:
    """Each dense training score gets + w log q_j(t) at its target's time, so the first step's logits
    differ from the same run without it by exactly that term; the per-epoch validation scores with the
    term; the sampled output and a trend weight of 0 (the plain GRU) train without it."""

    _, path = snap
    cfg = dataclasses.replace(SMALL, trend_weight=0.5, trend_window_seconds=7 * 86_400.0)
    one = dataclasses.replace(FAST, epochs=1)
    calls: dict[str, list] = {"logits": [], "times": []}
    real_loss, real_trend = train_mod.dense_softmax_loss, train_mod.training_trend

    def spy_loss(h, w, b, target, weight=None, base=None, base_weight=1.0, mask=None):
        logits = h.detach() @ w.detach().T + b.detach()  # the scores the loss forms (base is consumed)
        calls["logits"].append(logits if base is None else logits + base_weight * base)
        return real_loss(h, w, b, target, weight, base, base_weight, mask)

    class SpyPop:  # records the target times each step asks q(t) for
        def __init__(self, pop):
            self.pop = pop

        def log_q_at(self, times):
            calls["times"].append(np.array(times))
            return self.pop.log_q_at(times)

        def log_q_rows(self, times):  # the scorer's form (validation): not a training step's
            return self.pop.log_q_rows(times)

    def spy_trend(snapshot_dir, data, model_cfg, output="dense"):
        out = real_trend(snapshot_dir, data, model_cfg, output)
        return None if out is None else train_mod.TrainTrend(out.weight, SpyPop(out.popularity), out.times)

    monkeypatch.setattr(train_mod, "dense_softmax_loss", spy_loss)
    monkeypatch.setattr(train_mod, "training_trend", lambda *args, **kwargs: None)
    train(path, tmp_path / "plain", cfg, one)  # the same run without the term
    base = calls["logits"][0]
    calls["logits"].clear()
    monkeypatch.setattr(train_mod, "training_trend", spy_trend)
    res = train(path, tmp_path / "trend", cfg, one)
    assert calls["times"]
    data = prepare_data(path, cfg, one)
    trend = real_trend(path, data, cfg)
    w, pop, times = trend.weight, trend.popularity, trend.times
    assert w == 0.5 and pop.window == 7 * 86_400.0
    assert set(calls["times"][0].tolist()) <= set(times.tolist())  # targets' own timestamps
    expected = 0.5 * pop.log_q_at(calls["times"][0])
    torch.testing.assert_close(calls["logits"][0] - base, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(calls["logits"][0], base)

    # the epoch's validation scored the trend-trained network with the term, as the scorer will
    model = load_checkpoint(res.best_checkpoint).model
    report = json.loads(res.report.read_text())
    with_term = scored(model, data, cfg.inference_item_meta_mix, trend, report["exclude_seen"])
    assert report["epochs"][0]["ndcg@10"] == pytest.approx(with_term["ndcg@10"])
    assert report["epochs"][0]["val_loss"] == pytest.approx(with_term["val_loss"], rel=1e-5)

    assert real_trend(path, data, cfg, "dense") is not None
    assert real_trend(path, data, cfg, "sampled") is None
    assert real_trend(path, data, dataclasses.replace(cfg, trend_weight=0.0)) is None


def test_auto_output_is_dense_for_small_catalogues_and_sampled_for_large() -> None:
    """train.output "auto" (the default): the dense softmax up to DENSE_MAX_ITEMS items, sampled above."""
    from hrnn_core.train.trainer import DENSE_MAX_ITEMS, resolve_output  # noqa: PLC0415

    auto = TrainConfig()
    assert auto.output == "auto"
    assert resolve_output(auto, DENSE_MAX_ITEMS).output == "dense"
    assert resolve_output(auto, DENSE_MAX_ITEMS + 1).output == "sampled"
    assert resolve_output(TrainConfig(output="dense"), 10 * DENSE_MAX_ITEMS).output == "dense"  # explicit wins
