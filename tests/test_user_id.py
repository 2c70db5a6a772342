"""ModelConfig.use_user_id: the user's own id as a user field, fit on training owners only and
encoded the same way by the trainer and by serving; it enters the model at the output, as a learned
vector added to the state, and occupies no input."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from hrnn_core.config import ModelConfig, TrainConfig
from hrnn_core.model.features import USER_ID_FIELD, FeatureSpace, encode_events, known_users
from hrnn_core.model.inference import InferenceEngine
from hrnn_core.model.network import HRNNMeta, StepInputs
from hrnn_core.evaluation.protocols import build_split
from hrnn_core.evaluation.splits import SnapshotData
from hrnn_core.serving.recommend import SnapshotHistory
from hrnn_core.train.trainer import train
from research.synth import synthetic_snapshot

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODEL = ModelConfig(hidden_size=16, field_dim=8, input_size=16, use_user_id=True)
TRAIN = TrainConfig(epochs=2, batch_size=8, bptt=8, progress=False, val_owners=5)


@pytest.fixture(scope="module")
def snap(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_snapshot(tmp_path_factory.mktemp("uid") / "data", n_users=30, n_items=40, n_events=900,
                              n_genres=4, seed=5)


def test_vocabulary_is_the_training_owners_and_unknown_users_get_padding(snap) -> None:
    fs = FeatureSpace.fit(snap, MODEL)
    users = pq.read_table(snap / "users.parquet")
    owners = set(pq.read_table(snap / "sequences.parquet")["owner_id"].to_pylist())
    f = fs.users.cat_fields.index(USER_ID_FIELD)
    assert set(fs.users.vocabs[f]) == owners and fs.users.widths[f] == 1
    assert USER_ID_FIELD not in FeatureSpace.fit(snap, dataclasses.replace(MODEL, use_user_id=False)).users.cat_fields
    enc = encode_events(snap, fs)
    col = fs.users.slots[f][0]
    ids = enc.user_cat[users["user_idx"].to_numpy(), col]
    assert (ids > 0).all() and len(set(ids.tolist())) == len(owners)  # one id per user
    cat, _ = fs.users.encode_rows([{USER_ID_FIELD: "nobody"}], [{}])
    assert cat[0, col] == 0


def test_session_owners_are_not_users() -> None:
    seq = pa.table({"user_idx": pa.array([0, 1, 2], pa.int32())})
    users = pa.table({"user_idx": pa.array([2, 0, 1, 3], pa.int32()),
                      "user_id": ["u2", "u0", "~session:s1", "u3"]})  # u3 owns no training events
    assert known_users(seq, users) == ["u0", "u2"]


def test_user_holdout_test_users_get_no_id(snap, tmp_path) -> None:
    split = build_split("user_holdout", SnapshotData.load(snap), test_fraction=0.3, seed=1)
    fs = FeatureSpace.fit(split.write_snapshot(tmp_path / "train"), MODEL)
    vocab = set(fs.users.vocabs[fs.users.cat_fields.index(USER_ID_FIELD)])
    seq = pq.read_table(snap / "sequences.parquet")
    owner_of = dict(zip(seq["user_idx"].to_pylist(), seq["owner_id"].to_pylist(), strict=True))
    test_users = {owner_of[int(u)] for u in set(split.test.owner.tolist())}
    assert test_users and not test_users & vocab
    assert vocab == set(seq["owner_id"].to_pylist()) - test_users


def test_serving_encodes_the_id_as_training_does_and_the_model_uses_it(snap, tmp_path) -> None:
    res = train(snap, tmp_path / "run", MODEL, TRAIN)
    engine = InferenceEngine.from_checkpoint(res.last_checkpoint, device="cpu")
    history = SnapshotHistory(engine, snap)
    enc = encode_events(snap, engine.features)
    users = pq.read_table(snap / "users.parquet").to_pylist()
    for u in users[:5]:
        state = engine.init_state(history.user_features(u["user_id"]))
        torch.testing.assert_close(state.user_cat[0], enc.user_cat[u["user_idx"]])
    a, b = (engine.init_state(history.user_features(u["user_id"])) for u in users[:2])
    assert not torch.allclose(engine.score(a, None, 1e9), engine.score(b, None, 1e9))
    assert history.user_features(None) is None
    assert history.user_features("never-seen")["categorical"] == {USER_ID_FIELD: "never-seen"}


def test_user_id_needs_the_user_features() -> None:
    from hrnn_core.evaluation.hrnn_scorer import PLAIN_GRU

    # the id is a user field: without the user features it is off (an ablation switching those off needs no more)
    assert not ModelConfig(use_user_id=True, use_user_features=False).user_id_active
    # the plain-GRU baseline switches the id off with the other inputs, whatever the shared config says
    assert not dataclasses.replace(ModelConfig(use_user_id=True), **PLAIN_GRU).use_user_id


def _step_inputs(fs: FeatureSpace, enc, b: int, t: int, user_cat: torch.Tensor) -> StepInputs:
    return StepInputs(prev_item=torch.zeros(b, t, dtype=torch.long), prev_type=torch.zeros(b, t, dtype=torch.long),
                      prev_value=torch.zeros(b, t, 2), time_bucket=torch.zeros(b, t, dtype=torch.long),
                      context=torch.zeros(b, t, fs.context.cat_width, dtype=torch.long), user_cat=user_cat,
                      user_num=enc.user_num[:b, None].expand(b, t, -1), reset=torch.zeros(b, dtype=torch.bool))


def test_the_id_vector_is_added_to_the_state_and_nothing_for_unknown_users(snap) -> None:
    cfg = dataclasses.replace(MODEL, dropout=0.0)
    fs = FeatureSpace.fit(snap, cfg)
    enc = encode_events(snap, fs)
    torch.manual_seed(0)
    model = HRNNMeta(cfg, fs, *fs.item_table(snap)).eval()
    b, t = 4, 3
    col = fs.users.slots[fs.users.cat_fields.index(USER_ID_FIELD)][0]
    ucat = enc.user_cat[:b, None].expand(b, t, -1).clone()
    no_id = ucat.clone()
    no_id[..., col] = 0
    # the id is not an input: the GRU inputs and states are those of an unknown user
    torch.testing.assert_close(model.encode_inputs(_step_inputs(fs, enc, b, t, ucat))[0],
                               model.encode_inputs(_step_inputs(fs, enc, b, t, no_id))[0])
    with torch.no_grad():
        model.user_out.weight.normal_()
        model.user_out.weight[0] = 0.0  # the padding row stays zero (nn.Embedding padding_idx)
        out, hidden = model(_step_inputs(fs, enc, b, t, ucat))
        out0, hidden0 = model(_step_inputs(fs, enc, b, t, no_id))
    torch.testing.assert_close(hidden, hidden0)  # the carried state never holds u
    torch.testing.assert_close(out - out0, model.user_out(ucat[..., col]).detach())  # the output gets + u
    assert not torch.allclose(out, out0)
    # training learns u for known users only; the padding row gets no gradient
    model.train()
    out, _ = model(_step_inputs(fs, enc, b, t, ucat))
    (out.sum() + model(_step_inputs(fs, enc, b, t, no_id))[0].sum()).backward()
    assert model.user_out.weight.grad[0].abs().sum() == 0
    assert model.user_out.weight.grad[ucat[:, 0, col]].abs().sum() > 0


def test_the_id_vector_trains_and_serves(snap, tmp_path) -> None:
    res = train(snap, tmp_path / "run", MODEL, TRAIN)
    engine = InferenceEngine.from_checkpoint(res.last_checkpoint, device="cpu")
    assert engine.model.user_out is not None and engine.model.user_out.weight[1:].abs().sum() > 0
    history = SnapshotHistory(engine, snap)
    user = pq.read_table(snap / "users.parquet").to_pylist()[0]["user_id"]
    served = history.user_features(user)  # its features and its id, as the service reads them
    no_id = {"categorical": {k: v for k, v in served["categorical"].items() if k != USER_ID_FIELD},
             "numeric": served["numeric"]}
    with_id, without = engine.init_state(served), engine.init_state(no_id)
    torch.testing.assert_close(with_id.user_num, without.user_num)
    # the same features, the same (empty) history: only the learned id vector tells the two apart
    assert not torch.allclose(engine.score(with_id, None, 1e9), engine.score(without, None, 1e9))
    stranger = engine.init_state({**served, "categorical": {**served["categorical"], USER_ID_FIELD: "never-seen"}})
    torch.testing.assert_close(engine.score(stranger, None, 1e9), engine.score(without, None, 1e9))


def test_the_id_vector_needs_the_id(snap) -> None:
    from hrnn_core.evaluation.hrnn_scorer import PLAIN_GRU

    for cfg in (dataclasses.replace(MODEL, use_user_id=False),
                dataclasses.replace(MODEL, use_user_features=False),
                dataclasses.replace(ModelConfig(hidden_size=16, field_dim=8, input_size=16), **PLAIN_GRU)):
        fs = FeatureSpace.fit(snap, cfg)
        assert USER_ID_FIELD not in fs.users.cat_fields  # no id field, no id vector
        assert HRNNMeta(cfg, fs, *fs.item_table(snap)).user_out is None
    default = ModelConfig(hidden_size=16, field_dim=8, input_size=16)  # the shipped default: on
    fs = FeatureSpace.fit(snap, default)
    assert default.user_id_active and HRNNMeta(default, fs, *fs.item_table(snap)).user_out is not None


def test_the_id_occupies_no_input(snap) -> None:
    """The id's tokens have no input-bag rows and no block of the user MLP's or the initial state's inputs:
    the model's input parameters are those of the same features without the id."""
    fs = FeatureSpace.fit(snap, MODEL)
    model = HRNNMeta(MODEL, fs, *fs.item_table(snap))
    without = HRNNMeta(dataclasses.replace(MODEL, use_user_id=False), FeatureSpace.fit(snap, dataclasses.replace(
        MODEL, use_user_id=False)), *fs.item_table(snap))
    assert USER_ID_FIELD in fs.users.cat_fields and without.user_out is None
    for name, p in without.named_parameters():
        assert model.get_parameter(name).shape == p.shape, name
    extra = {n for n, _ in model.named_parameters()} - {n for n, _ in without.named_parameters()}
    assert extra == {"user_out.weight"}
