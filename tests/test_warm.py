"""Warm-start retraining (issue 19): the champion's vocabularies grow without renumbering, its weights
seed the new network so that old owners get the champion's scores before any fine-tuning, and the
nightly retrain chooses warm or full (full on schedule, after a failed gate, without a champion) and
records the lineage with the model."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import bentoml
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from hrnn_core import registry, retrain
from hrnn_core.config import ModelConfig, TrainConfig, load_config
from hrnn_core.data.warehouse import connect
from hrnn_core.errors import ConfigError
from hrnn_core.model.checkpoint import load_checkpoint
from hrnn_core.model.features import FieldGroup, encode_events
from hrnn_core.model.steps import gather_steps
from hrnn_core.train import warm
from hrnn_core.train.trainer import _prepare, _step_loss, gather_inputs, owner_windows, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODEL = ModelConfig(hidden_size=16, field_dim=8, input_size=16, trend_weight=0.0, min_category_count=1)
TRAIN = TrainConfig(epochs=1, batch_size=8, bptt=8, progress=False, val_owners=5, threads=1, device="cpu")
START = 1_700_000_000
CUT = START + 14 * 86_400


def _two_snapshots(root: Path) -> tuple[Path, Path]:
    """One warehouse, two snapshots: A as of day 14 (items created before it), B after the rest arrived
    (new items, new users' first events, a new device value); the warehouse's stable ids in both."""
    from research import synth  # noqa: PLC0415
    from hrnn_core.data.ingest import ingest_path  # noqa: PLC0415
    from hrnn_core.data.transforms import export_snapshot  # noqa: PLC0415

    synth.generate(root / "raw", n_users=40, n_items=60, n_events=1500, n_genres=5, seed=5, days=20,
                   cold_items_fraction=0.3)
    inter, items = pq.read_table(root / "raw" / "interactions.parquet"), pq.read_table(root / "raw" / "items.parquet")
    users = pq.read_table(root / "raw" / "users.parquet")
    late_user = pc.is_in(inter["user_id"], pa.array(["u3", "u7"]))  # users who only arrive after the cut
    early = pc.and_(pc.less(inter["timestamp"], CUT), pc.invert(late_user))
    late = inter.filter(pc.invert(early))
    late = late.set_column(late.schema.get_field_index("device"), "device",  # a context value new after the cut
                           pc.if_else(pc.equal(late["item_id"], "i5"), "smart-tv", late["device"]))
    parts = {"a": (inter.filter(early), items.filter(pc.less(items["creation_timestamp"], CUT)), users),
             "b": (late, items.filter(pc.greater_equal(items["creation_timestamp"], CUT)), None)}
    cfg = load_config(overrides={"paths": {"data_dir": str(root / "data")}}, environ={})
    snaps = []
    with connect(cfg) as con:
        for name, tables in parts.items():
            folder = root / name
            folder.mkdir()
            for table, t in zip(("interactions", "items", "users"), tables, strict=True):
                if t is not None:
                    pq.write_table(t, folder / f"{table}.parquet")
            ingest_path(cfg, folder, None, con)
            snaps.append(export_snapshot(con, cfg, as_of=float(CUT) if name == "a" else None).path)
    return snaps[0], snaps[1]


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("warm")
    a, b = _two_snapshots(root)
    champion = train(a, root / "champion", MODEL, TRAIN)
    return a, b, champion.last_checkpoint


def test_extend_group_appends_values_and_keeps_fields_widths_and_scalers() -> None:
    old = FieldGroup(["genre", "_user_id"], [["g1", "g2"], ["u1"]], ["price"], [10.0], [2.0], [2, 1], True, 5.0,
                     [[5.0, 12.0]])
    fresh = FieldGroup(["colour", "genre", "_user_id"], [["red"], ["g3", "g1"], ["u2", "u1"]], ["price", "age"],
                       [99.0, 1.0], [9.0, 1.0], [1, 4, 1], True, 5.0, [[50.0, 120.0], [0.5]])
    new = warm.extend_group(old, fresh, cap=100)
    assert new.cat_fields == ["genre", "_user_id"] and new.vocabs == [["g1", "g2", "g3"], ["u1", "u2"]]
    assert (new.widths, new.num_fields, new.num_mean, new.num_std) == ([2, 1], ["price"], [10.0], [2.0])
    assert new.num_edges == [[5.0, 12.0]] and new.num_width == old.num_width  # old rows keep their buckets
    assert warm.extend_group(old, fresh, cap=2).vocabs == [["g1", "g2"], ["u1", "u2"]]  # capped, old kept whole


def test_warm_start_grows_vocabularies_without_renumbering(two) -> None:
    a, b, champion_path = two
    ck = load_checkpoint(champion_path)
    run = _prepare(b, MODEL, TRAIN, torch.device("cpu"), None, init_from=champion_path)
    old, new = ck.features, run.data.features
    assert new.n_items > old.n_items and new.item_ids[:old.n_items] == old.item_ids  # the stable index
    users_old, users_new = old.users.vocabs[-1], new.users.vocabs[-1]
    assert len(users_new) > len(users_old) and users_new[:len(users_old)] == users_old
    assert {"u3", "u7"} <= set(users_new[len(users_old):])
    for f, vocab in enumerate(old.context.vocabs):  # "smart-tv" appended, old values in their places
        assert new.context.vocabs[f][:len(vocab)] == vocab
    assert "smart-tv" in sum(new.context.vocabs, []) and "smart-tv" not in sum(old.context.vocabs, [])
    assert (new.items.num_mean, new.items.num_std, new.value_mean) == (old.items.num_mean, old.items.num_std,
                                                                        old.value_mean)  # scalers not refit
    assert run.warm_start["items_added"] == new.n_items - old.n_items and run.warm_start["users_added"] >= 2

    model = run.model.eval()
    fresh = torch.nonzero(torch.cat([ck.item_freq == 0, torch.ones(new.n_items - old.n_items, dtype=torch.bool)])).flatten()
    w, bias = model.meta_vectors(model.item_cat[fresh], model.item_num[fresh])
    assert torch.equal(model.item_w.weight[fresh], w) and torch.equal(model.item_b.weight[fresh, 0], bias)
    assert not model.user_out.weight[-(len(users_new) - len(users_old)):].any()  # new users: zero id vectors


def _states(model, snapshot: Path, features) -> torch.Tensor:
    """The top states (N, H) of every event of ``snapshot``, each owner from its first event."""
    enc = encode_events(snapshot, features)
    rows = []
    for o in range(enc.n_owners):
        s, e = enc.owner_start[o], enc.owner_start[o + 1]
        x = gather_steps(enc, np.arange(s, e)[None], np.array([enc.owner_user[o]]))
        with torch.no_grad():
            rows.append(model(x)[0][0])
    return torch.cat(rows)


def test_warm_start_reproduces_the_champions_scores_before_fine_tuning(two) -> None:
    a, b, champion_path = two
    ck = load_checkpoint(champion_path)
    run = _prepare(b, MODEL, TRAIN, torch.device("cpu"), None, init_from=champion_path)
    model = run.model.eval()
    h_old, h_new = _states(ck.model, a, ck.features), _states(model, a, run.data.features)  # A's owners, A's events
    assert torch.allclose(h_old, h_new, atol=1e-5)
    n = ck.features.n_items
    trained = ck.item_freq > 0  # the champion's cold items are scored from metadata alone (lambda = 1), as before
    for mix in (0.0, MODEL.inference_item_meta_mix, 1.0):
        with torch.no_grad():
            old_scores, new_scores = ck.model.scores(h_old, None, mix), model.scores(h_new, None, mix)[:, :n]
        assert torch.allclose(old_scores[:, trained], new_scores[:, trained], atol=1e-5), mix
        if mix == 1.0:
            assert torch.allclose(old_scores, new_scores, atol=1e-5)
    assert (~trained).any() and trained.sum() > 20
    assert float(model.cold_log_prior) == float(ck.model.cold_log_prior)


def test_a_warm_start_validates_on_owners_newer_than_its_champion(two, monkeypatch) -> None:
    """Early stopping of a warm fit reads owners whose last event came at or after the champion's cut: the
    starting weights never trained on it (the champion's checkpoint carries its snapshot's cut)."""
    from hrnn_core.train import batches  # noqa: PLC0415

    a, b, champion_path = two
    assert load_checkpoint(champion_path).raw["as_of"] == float(CUT)
    monkeypatch.setattr(batches, "MIN_FRESH_OWNERS", 3)  # this toy stream has 40 users
    stamps = pq.read_table(Path(b) / "sequences.parquet", columns=["timestamps"])["timestamps"].to_pylist()
    last = np.array([max(t) if t else -np.inf for t in stamps])  # each owner's last event, snapshot row order
    run = _prepare(b, MODEL, TRAIN, torch.device("cpu"), None, init_from=champion_path)
    ev = run.data.events
    owners = np.searchsorted(ev.owner_start, run.data.val_segments[:, 1] - 1, side="right") - 1
    assert len(owners) == TRAIN.val_owners and (last[owners] >= CUT).all()
    assert (last[np.diff(ev.owner_start) >= 2] < CUT).any()  # older owners exist: the rule chose
    monkeypatch.setattr(batches, "MIN_FRESH_OWNERS", 10_000)  # too few new owners: as a full retrain
    wide = _prepare(b, MODEL, TRAIN, torch.device("cpu"), None, init_from=champion_path)
    full = _prepare(b, MODEL, TRAIN, torch.device("cpu"), None)
    np.testing.assert_array_equal(wide.data.val_segments, full.data.val_segments)


def test_a_warm_start_refuses_another_network(two) -> None:
    _, b, champion_path = two
    with pytest.raises(warm.WarmStartError, match="another model config"):
        _prepare(b, dataclasses.replace(MODEL, hidden_size=8), TRAIN, torch.device("cpu"), None,
                 init_from=champion_path)


# ---------------------------------------------------------------- the nightly retrain's choice


def _snapshot(path: Path) -> dict:
    return {"snapshot_id": path.name, "path": str(path)}


def _register(cfg, artifact: Path, snapshot_id: str, lineage: dict | None, promote: bool,
              rejected: bool = False) -> str:
    with connect(cfg) as con:
        tag = registry.register(con, "hrnn", artifact, snapshot_id=snapshot_id, data_interval=(START, CUT),
                                extra_metadata=lineage)
        if promote:
            registry.promote(con, tag)
        elif rejected:
            registry.reject(con, tag, "does not beat the champion")
    return tag


@pytest.fixture
def store(tmp_path: Path):
    """The tests' model store emptied of HRNN-meta models before and after (it is shared by the session)."""
    def clear() -> None:
        for m in bentoml.models.list():
            if m.tag.name == registry.NAMES["hrnn"]:
                bentoml.models.delete(m.tag)
    clear()
    yield
    clear()


def test_full_without_champion_then_warm_then_full_on_schedule_and_after_a_failed_gate(two, tmp_path, store) -> None:
    a, b, champion_path = two
    cfg = load_config(overrides={"paths": {"data_dir": str(tmp_path / "data")}}, environ={})
    art = tmp_path / "artifact"
    art.mkdir()
    (art / "model.pt").write_bytes(champion_path.read_bytes())
    as_of_b = json.loads((b / "manifest.json").read_text())["as_of"]

    plan = retrain.retrain_plan(cfg, _snapshot(b))
    assert (plan["retrain_mode"], plan["mode_reason"], plan["full_base_as_of"]) == ("full", "no champion yet", as_of_b)

    champ = _register(cfg, art, a.name, {"retrain_mode": "full", "full_base_as_of": float(CUT)}, promote=True)
    plan = retrain.retrain_plan(cfg, _snapshot(b))
    assert (plan["retrain_mode"], plan["warm_from"], plan["full_base_as_of"]) == ("warm", champ, float(CUT))
    assert Path(plan["init_from"]).read_bytes() == champion_path.read_bytes()
    full_cfg = load_config(overrides={"paths": {"data_dir": str(tmp_path / "data")}, "retrain": {"mode": "full"}},
                           environ={})
    assert retrain.retrain_plan(full_cfg, _snapshot(b))["retrain_mode"] == "full"

    soon = load_config(overrides={"paths": {"data_dir": str(tmp_path / "data")},
                                  "retrain": {"full_every_days": (as_of_b - CUT) / 86_400}}, environ={})
    plan = retrain.retrain_plan(soon, _snapshot(b))  # the lineage's full retrain is exactly that old: due
    assert plan["retrain_mode"] == "full" and plan["mode_reason"].startswith("scheduled")

    failed = _register(cfg, art, "an-earlier-night", {"retrain_mode": "warm", "warm_from": champ,
                                                      "full_base_as_of": float(CUT)}, promote=False, rejected=True)
    plan = retrain.retrain_plan(cfg, _snapshot(b))
    assert plan["retrain_mode"] == "full" and failed in plan["mode_reason"]


def test_a_warm_retrain_records_its_lineage_and_the_gate_sees_it(two, tmp_path, store) -> None:
    a, b, champion_path = two
    cfg = load_config(overrides={"paths": {"data_dir": str(tmp_path / "data")}, "model": dataclasses.asdict(MODEL),
                                 "train": {**{k: getattr(TRAIN, k) for k in ("batch_size", "bptt", "val_owners",
                                                                              "threads", "device")}, "epochs": 1},
                                 "retrain": {"warm_epochs": 2}}, environ={})
    art = tmp_path / "artifact"
    art.mkdir()
    (art / "model.pt").write_bytes(champion_path.read_bytes())
    champ = _register(cfg, art, a.name, {"retrain_mode": "full", "full_base_as_of": float(CUT)}, promote=True)

    run = retrain.train_and_evaluate(cfg, _snapshot(b), "hrnn")
    assert run["lineage"]["retrain_mode"] == "warm" and run["lineage"]["warm_from"] == champ
    assert len(run["history"]) == 2  # retrain.warm_epochs, not train.epochs
    report = json.loads((retrain.runs_dir(cfg, b.name) / "hrnn" / "train" / "report.json").read_text())
    assert report["warm_start"]["items_added"] > 0
    decision = retrain.register_and_promote(cfg, _snapshot(b), [run], None, (float(CUT), float(CUT) + 86_400))
    with connect(cfg, read_only=True) as con:
        shown = registry.show(con, decision["candidate"])
    assert shown["lineage"]["retrain_mode"] == "warm" and shown["lineage"]["warm_from"] == champ
    assert shown["lineage"]["full_base_as_of"] == float(CUT)


def test_the_warm_fine_tune_settings_come_from_the_retrain_config() -> None:
    cfg = load_config(overrides={"retrain": {"warm_epochs": 4, "warm_new_event_weight": 2.5, "warm_lr_scale": 2.0,
                                             "warm_shrink": 0.7}}, environ={})
    train = retrain.warm_train_config(cfg.train, cfg.retrain)
    assert (train.epochs, train.min_epochs, train.new_event_weight, train.init_shrink) == (4, 0, 2.5, 0.7)
    assert train.lr == 2.0 * cfg.train.lr
    assert dataclasses.replace(train, epochs=cfg.train.epochs, min_epochs=cfg.train.min_epochs, lr=cfg.train.lr,
                               new_event_weight=cfg.train.new_event_weight, init_shrink=cfg.train.init_shrink) == cfg.train
    for bad in ({"warm_epochs": 0}, {"warm_new_event_weight": 0}, {"warm_lr_scale": 0}, {"warm_shrink": 1.5}):
        with pytest.raises(ConfigError):
            load_config(overrides={"retrain": bad}, environ={})


def test_a_shrunk_warm_start_begins_from_the_champions_weights_times_the_factor(two) -> None:
    _, b, champion_path = two
    plain = _prepare(b, MODEL, TRAIN, torch.device("cpu"), None, init_from=champion_path)
    shrunk = _prepare(b, MODEL, dataclasses.replace(TRAIN, init_shrink=0.5), torch.device("cpu"), None,
                      init_from=champion_path)
    old = load_checkpoint(champion_path).model.state_dict()
    for name, p in shrunk.model.named_parameters():
        if name == "item_in.weight":  # the champion's rows, halved (the new items' rows are zero either way)
            n = len(old[name])
            torch.testing.assert_close(p[:n - 1], 0.5 * old[name][:n - 1])
        elif p.shape == old[name].shape and name not in ("item_w.weight", "item_b.weight"):
            torch.testing.assert_close(p, 0.5 * dict(plain.model.named_parameters())[name])
    for name, buf in shrunk.model.named_buffers():  # item metadata and the calibrated priors are not weights
        torch.testing.assert_close(buf, dict(plain.model.named_buffers())[name])


def test_a_warm_start_weighs_the_events_newer_than_its_champion(two) -> None:
    _, b, champion_path = two
    stamps = pq.read_table(Path(b) / "sequences.parquet", columns=["timestamps"])["timestamps"].to_pylist()
    newer = np.concatenate([np.asarray(t, dtype=np.float64) for t in stamps]) >= CUT  # the encoder's flat order
    assert newer.any() and not newer.all()
    run = _prepare(b, MODEL, dataclasses.replace(TRAIN, new_event_weight=3.0), torch.device("cpu"), None,
                   init_from=champion_path)
    np.testing.assert_array_equal(run.event_w.numpy(), np.where(newer, 3.0, 1.0))
    assert _prepare(b, MODEL, TRAIN, torch.device("cpu"), None, init_from=champion_path).event_w is None  # weight 1
    # the training loss weighs each event's cross-entropy by it: a window holding newer events
    run.model.eval()  # no dropout: the same forward pass twice
    window = next(w for w in owner_windows(run.data.train_segments, TRAIN.batch_size, TRAIN.bptt)
                  if (run.event_w[w.idx[w.idx >= 0]] == 3.0).any())
    idx, x = torch.from_numpy(window.idx), gather_inputs(run.data, window)
    weighted, _, _ = _step_loss(run, run.data, idx, x, 0.5, None, None)
    run.event_w = None
    plain, _, _ = _step_loss(run, run.data, idx, x, 0.5, None, None)
    torch.testing.assert_close(weighted.ce, plain.ce)
    w = torch.where(torch.from_numpy(newer[window.idx[window.idx >= 0]]), 3.0, 1.0)
    torch.testing.assert_close(weighted.loss, (w * plain.ce).mean())
    assert _prepare(b, MODEL, dataclasses.replace(TRAIN, new_event_weight=3.0), torch.device("cpu"), None).event_w \
        is None  # from scratch: no champion, no newer events
