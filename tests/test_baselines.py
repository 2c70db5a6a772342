"""Baselines (pop, recent_pop, bpr, fm) on tiny synthetic data; one slow test on ml-100k."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from hrnn_core.evaluation.baselines.base import ScoreBatch, TrainData
from hrnn_core.evaluation.baselines.bpr import BPRScorer
from hrnn_core.evaluation.baselines.features import FieldEncoder, entity_table
from hrnn_core.evaluation.baselines.fm import FMScorer
from hrnn_core.evaluation.baselines.popularity import PopularityScorer, RecentPopularityScorer
from hrnn_core.evaluation.splits import SnapshotData

pytestmark = pytest.mark.usefixtures("one_torch_thread")


N_ITEMS = 28  # 0-9 preferred by group 0, 10-19 by group 1, 20-27 never in training (cold)
GROUP_ITEMS = (np.arange(0, 10), np.arange(10, 20))
COLD_ITEMS = (np.arange(20, 24), np.arange(24, 28))  # metadata of group 0's / group 1's items
N_USERS = 40  # even users: group 0, odd users: group 1


def planted(seed: int = 0, per_user: int = 8) -> SnapshotData:
    """Each user picks ``per_user`` of its group's items (random order, one event a minute)."""
    rng = np.random.default_rng(seed)
    u, it, ts = [], [], []
    for user in range(N_USERS):
        chosen = rng.choice(GROUP_ITEMS[user % 2], size=per_user, replace=False)
        u += [user] * per_user
        it += chosen.tolist()
        ts += (1_000_000 + 60 * np.arange(per_user) + 7 * user).tolist()
    return SnapshotData.from_events(u, it, ts, N_ITEMS)


def item_table() -> pa.Table:
    """genres: "a|x" for group 0's items (cold ones too), "b|x" for group 1's; unique titles."""
    genre = ["a|x" if (j < 10 or 20 <= j < 24) else "b|x" for j in range(N_ITEMS)]
    cat = [[("genres", g), ("title", f"title {j}")] for j, g in enumerate(genre)]
    num = [[("year", 1990.0 + j % 7)] for j in range(N_ITEMS)]
    return pa.table({"item_idx": pa.array(range(N_ITEMS), pa.int32()),
                     "item_id": [str(j) for j in range(N_ITEMS)],
                     "categorical": pa.array(cat, pa.map_(pa.string(), pa.string())),
                     "numeric": pa.array(num, pa.map_(pa.string(), pa.float64())),
                     "creation_timestamp": pa.nulls(N_ITEMS, pa.float64())})


def user_table() -> pa.Table:
    cat = [[("gender", "MF"[u % 2]), ("zip_code", f"{10000 + u}")] for u in range(N_USERS)]
    num = [[("age", 20.0 + u)] for u in range(N_USERS)]
    return pa.table({"user_idx": pa.array(range(N_USERS), pa.int32()),
                     "user_id": [str(u) for u in range(N_USERS)],
                     "categorical": pa.array(cat, pa.map_(pa.string(), pa.string())),
                     "numeric": pa.array(num, pa.map_(pa.string(), pa.float64()))})


def train_data(data: SnapshotData, seed: int = 0) -> TrainData:
    freq = np.bincount(data.item, minlength=data.n_items)
    return TrainData(data.sequences, freq, data.n_items, item_table(), user_table(), seed)


def all_users_batch(data: SnapshotData, t: float = 2_000_000.0, pos: np.ndarray | None = None) -> ScoreBatch:
    """One case per row reading its whole sequence (or ``pos`` events), at time ``t``."""
    n = data.sequences.num_rows
    full = np.diff(data.offsets)
    return ScoreBatch(data.sequences, np.arange(n), full if pos is None else pos, data.user_idx, np.full(n, t))


def share_group_first(scores: torch.Tensor, data: SnapshotData) -> float:
    """Share of users whose group's items all score above every other trained item."""
    ok = []
    for r, user in enumerate(data.user_idx):
        mine, other = GROUP_ITEMS[user % 2], GROUP_ITEMS[1 - user % 2]
        ok.append(bool(scores[r, mine].min() > scores[r, other].max()))
    return float(np.mean(ok))


# --------------------------------------------------------------------------- features


def test_field_encoder_skips_identifier_like_fields_and_fits_on_training_rows():
    items = item_table()
    cat, num, present = entity_table(items, "item_idx", N_ITEMS)
    assert present.all()
    warm = np.arange(N_ITEMS) < 20
    enc = FieldEncoder.fit(cat.filter(pa.array(warm)), num.filter(pa.array(warm)), offset=5, multi_valued=True)
    assert enc.cat_fields == ["genres"]  # title: one value per row -> skipped
    assert sorted(enc.vocabs[0]) == ["a", "b", "x"]
    ids, vals = enc.encode(cat, num, N_ITEMS)
    assert ids.shape[0] == N_ITEMS and ids.min() >= 0 and ids.max() < enc.end
    genre_ids = ids[:, :2]
    assert np.allclose(vals[:, :2], 0.5)  # two known genres each: a mean
    assert set(genre_ids[0]) == {5 + enc.vocabs[0].index("a"), 5 + enc.vocabs[0].index("x")}
    assert FieldEncoder.from_dict(enc.to_dict()) == enc


# --------------------------------------------------------------------------- popularity


def test_popularity_ranks_most_frequent_first_and_its_ppl_is_the_smoothed_frequency():
    data = SnapshotData.from_events([0, 0, 1, 1, 1, 2], [3, 3, 3, 1, 1, 0], [1, 2, 3, 4, 5, 6], n_items=5)
    freq = np.bincount(data.item, minlength=5)  # [1, 2, 0, 3, 0]
    scorer = PopularityScorer()
    scorer.fit(TrainData(data.sequences, freq, 5, None, None))
    scores = scorer.score(all_users_batch(data))
    assert scores.shape == (3, 5)
    assert int(scores[0].argmax()) == 3
    assert torch.allclose(scores[0].double(), torch.log(torch.tensor(freq + 1.0)) - math.log(6 + 5), atol=1e-6)
    targets = torch.tensor([3, 1, 4])
    p = (freq + 1.0) / (freq.sum() + 5)
    ppl = math.exp(-np.mean(np.log(p[targets.numpy()])))
    nll = torch.nn.functional.cross_entropy(scores.double(), targets, reduction="mean")
    assert math.isclose(math.exp(nll.item()), ppl, rel_tol=1e-5)
    assert scorer.outputs_distribution


def test_recent_popularity_counts_only_the_window_before_t():
    # item 1: 3 events in the last hour before t = 10_000; item 2: 5 events long before; item 0 none.
    u = [0, 0, 0, 1, 1, 1, 1, 1]
    it = [1, 1, 1, 2, 2, 2, 2, 2]
    ts = [9_000, 9_500, 9_999, 10, 20, 30, 40, 50]
    data = SnapshotData.from_events(u, it, ts, n_items=4)
    freq = np.bincount(data.item, minlength=4)
    scorer = RecentPopularityScorer(window_seconds=3600)
    scorer.fit(TrainData(data.sequences, freq, 4, None, None))
    batch = ScoreBatch(data.sequences, np.array([0, 1]), np.array([0, 0]), data.user_idx, np.array([10_000.0, 10_000.0]))
    counts = scorer.recent_counts(batch)
    assert counts[0].tolist() == [0, 3, 0, 0]
    scores = scorer.score(batch)
    assert scores.shape == (2, 4)
    assert scores[0].argsort(descending=True).tolist()[:3] == [1, 2, 0]  # recent first, then all-time ties
    assert torch.allclose(scores.exp().sum(1), torch.ones(2), atol=1e-5)  # a distribution

    # A burst of events at exactly t and after t (another owner, in the sequences read at scoring
    # time) must not change anything.
    burst_u = u + [2] * 60
    burst_it = it + [3] * 60
    burst_ts = ts + [10_000] * 30 + [10_000 + k for k in range(1, 31)]
    later = SnapshotData.from_events(burst_u, burst_it, burst_ts, n_items=4)
    batch2 = ScoreBatch(later.sequences, np.array([0, 1]), np.array([0, 0]), later.user_idx, np.array([10_000.0] * 2))
    assert torch.equal(scorer.score(batch2), scores)
    # ... while events just before t do count.
    early = SnapshotData.from_events(u + [2] * 4, it + [3] * 4, ts + [9_998] * 4, n_items=4)
    batch3 = ScoreBatch(early.sequences, np.array([0, 1]), np.array([0, 0]), early.user_idx, np.array([10_000.0] * 2))
    assert scorer.recent_counts(batch3)[0].tolist() == [0, 3, 0, 4]


def test_popularity_save_load_round_trip(tmp_path: Path):
    data = planted()
    for scorer, cls in ((PopularityScorer(), PopularityScorer), (RecentPopularityScorer(window_seconds=300), RecentPopularityScorer)):
        scorer.fit(train_data(data))
        batch = all_users_batch(data, t=1_000_200.0)
        scorer.save(tmp_path / scorer.name)
        assert torch.equal(cls.load(tmp_path / scorer.name).score(batch), scorer.score(batch))


# --------------------------------------------------------------------------- BPR

BPR_SMALL = {"batch_size": 64, "epochs": 40, "lr": 0.02, "factors": 16, "l2": 1e-4}


@pytest.fixture(scope="module")
def fitted_bpr() -> tuple[BPRScorer, SnapshotData]:
    data = planted()
    scorer = BPRScorer(**BPR_SMALL)
    scorer.fit(train_data(data))
    return scorer, data


def test_bpr_learns_planted_groups(fitted_bpr):
    scorer, data = fitted_bpr
    scores = scorer.score(all_users_batch(data))
    assert scores.shape == (N_USERS, N_ITEMS)
    assert share_group_first(scores, data) > 0.9
    assert scorer.losses[-1] < scorer.losses[0]
    cold = np.concatenate(COLD_ITEMS)
    assert (scores[:, cold].max(1).values < scores[:, :20].min(1).values).all()  # untrained items last


def test_bpr_folds_in_unseen_owners_from_history(fitted_bpr):
    scorer, data = fitted_bpr
    # owners 100/101 were never trained on: they read a history of group 0 / group 1 items.
    seq = SnapshotData.from_events([100] * 3 + [101] * 3, [0, 1, 2, 10, 11, 12], range(6), N_ITEMS).sequences
    s = scorer.score(ScoreBatch(seq, np.array([0, 1]), np.array([3, 3]), np.array([100, 101]), np.array([10.0, 10.0])))
    assert s[0, 3:10].mean() > s[0, 13:20].mean() and s[1, 13:20].mean() > s[1, 3:10].mean()
    # empty history -> item bias only: the same scores for both
    s0 = scorer.score(ScoreBatch(seq, np.array([0, 1]), np.array([0, 0]), np.array([100, 101]), np.array([1.0, 1.0])))
    assert torch.equal(s0[0], s0[1])


def test_bpr_deterministic_and_save_load(fitted_bpr, tmp_path: Path):
    scorer, data = fitted_bpr
    batch = all_users_batch(data)
    again = BPRScorer(**BPR_SMALL)
    again.fit(train_data(data))
    assert torch.equal(again.score(batch), scorer.score(batch))
    scorer.save(tmp_path / "bpr")
    assert torch.equal(BPRScorer.load(tmp_path / "bpr").score(batch), scorer.score(batch))
    state = torch.load(tmp_path / "bpr" / "state.pt", weights_only=True)
    assert "model.item.weight" in state


# --------------------------------------------------------------------------- FM

FM_SMALL = {"batch_size": 64, "epochs": 30, "lr": 0.02, "factors": 16, "weight_decay": 0.0,
            "item_id_dropout": 0.5, "history_length": 5}


@pytest.fixture(scope="module")
def fitted_fm() -> tuple[FMScorer, SnapshotData]:
    data = planted()
    scorer = FMScorer(**FM_SMALL)
    scorer.fit(train_data(data))
    return scorer, data


def test_fm_uses_low_cardinality_metadata_only(fitted_fm):
    scorer, _ = fitted_fm
    assert scorer.item_enc.cat_fields == ["genres"] and scorer.item_enc.num_fields == ["year"]
    assert scorer.user_enc.cat_fields == ["gender"] and scorer.user_enc.num_fields == ["age"]  # zip_code skipped
    assert scorer.context_enc.n_features == 0  # no contexts in the data


def test_fm_learns_planted_groups_and_scores_cold_items_from_metadata(fitted_fm):
    scorer, data = fitted_fm
    scores = scorer.score(all_users_batch(data))
    assert scores.shape == (N_USERS, N_ITEMS)
    assert share_group_first(scores, data) > 0.9
    assert scorer.losses[-1] < scorer.losses[0]
    ok = [bool(scores[r, COLD_ITEMS[u % 2]].min() > scores[r, COLD_ITEMS[1 - u % 2]].max())
          for r, u in enumerate(data.user_idx)]
    assert np.mean(ok) > 0.9


def test_fm_folds_in_unseen_owners(fitted_fm):
    scorer, _ = fitted_fm
    seq = SnapshotData.from_events([100] * 3 + [101] * 3, [0, 1, 2, 10, 11, 12], range(6), N_ITEMS).sequences
    s = scorer.score(ScoreBatch(seq, np.array([0, 1]), np.array([3, 3]), np.array([100, 101]), np.array([10.0, 10.0])))
    assert s[0, 3:10].mean() > s[0, 13:20].mean() and s[1, 13:20].mean() > s[1, 3:10].mean()
    assert s[0, COLD_ITEMS[0]].mean() > s[0, COLD_ITEMS[1]].mean()


def test_fm_deterministic_and_save_load(fitted_fm, tmp_path: Path):
    scorer, data = fitted_fm
    batch = all_users_batch(data)
    again = FMScorer(**FM_SMALL)
    again.fit(train_data(data))
    assert torch.equal(again.score(batch), scorer.score(batch))
    scorer.save(tmp_path / "fm")
    assert torch.equal(FMScorer.load(tmp_path / "fm").score(batch), scorer.score(batch))


def test_fm_reads_the_last_readable_events_context():
    data = planted()
    seq = data.sequences
    n = int(seq["n_events"].to_numpy().sum())
    # context "device": group 0's events on "phone", group 1's on "desktop"
    device = np.repeat(np.where(data.user_idx % 2 == 0, "phone", "desktop"), np.diff(data.offsets))
    maps = pa.array([[("device", d)] for d in device], pa.map_(pa.string(), pa.string()))
    seq = seq.set_column(seq.schema.get_field_index("contexts"), "contexts",
                         pa.ListArray.from_arrays(pa.array(data.offsets.astype(np.int32)), maps))
    assert n == len(device)
    scorer = FMScorer(**{**FM_SMALL, "epochs": 5})
    scorer.fit(TrainData(seq, np.bincount(data.item, minlength=N_ITEMS), N_ITEMS, None, None))
    assert scorer.context_enc.cat_fields == ["device"]
    ids, vals = scorer._user_side(seq, np.array([0, 1]), np.array([0, 2]), np.array([0, 1]))
    ctx_ids = set(range(scorer.context_enc.offset, scorer.context_enc.end))
    assert not ctx_ids & set(ids[0].tolist())  # no readable event: no context
    assert len(ctx_ids & set(ids[1].tolist())) == 1


# --------------------------------------------------------------------------- ml-100k (slow)

SNAPSHOTS = Path(__file__).resolve().parents[1] / "data" / "snapshots"


def evaluate(scorer, cases, batch_size: int = 512) -> dict:
    """Full-catalogue metrics of ``scorer`` on ``cases`` (Accumulator, seen items excluded)."""
    from hrnn_core.evaluation.metrics import Accumulator  # noqa: PLC0415

    acc = Accumulator(cases.n_items, ks=(10,))
    for start in range(0, len(cases), batch_size):
        b = cases.batch(np.arange(start, min(start + batch_size, len(cases))))
        scores = scorer.score(ScoreBatch(cases.sequences, b["rows"], b["pos"], b["owners"], b["target_timestamp"]))
        acc.add(scores, b["targets"], exclude=b["exclude"], owners=b["owners"],
                logits=scores if scorer.outputs_distribution else None)
    return acc.summary()


def _ml100k() -> Path | None:
    for manifest in sorted(SNAPSHOTS.glob("*/manifest.json")) if SNAPSHOTS.is_dir() else []:
        if '"n_events": 100000' in manifest.read_text():
            return manifest.parent
    return None


@pytest.mark.slow
def test_ml100k_leave_one_out_bpr_and_fm_beat_popularity():
    from hrnn_core.evaluation.protocols import build_split  # noqa: PLC0415

    folder = _ml100k()
    if folder is None:
        pytest.skip("no ml-100k snapshot under data/snapshots (run `hrnn demo`)")
    split = build_split("leave_one_out", SnapshotData.load(folder))
    data = TrainData(split.train, split.item_frequency, split.n_items, pq.read_table(folder / "items.parquet"),
                     pq.read_table(folder / "users.parquet"))
    results = {}
    for scorer in (PopularityScorer(), RecentPopularityScorer(), BPRScorer(), FMScorer()):
        t0 = time.perf_counter()
        scorer.fit(data)
        results[scorer.name] = {**evaluate(scorer, split.test), "fit_s": time.perf_counter() - t0}
    print({k: (round(v["ndcg@10"], 4), round(v["recall@10"], 4), round(v["fit_s"], 1)) for k, v in results.items()})
    assert results["pop"]["n_events"] == len(split.test)
    assert results["bpr"]["ndcg@10"] > results["pop"]["ndcg@10"]
    assert results["fm"]["ndcg@10"] > results["pop"]["ndcg@10"]
