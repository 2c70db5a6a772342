"""Checkpoints written before the settled knobs became the code's behaviour (issue 17) still load: their
retired settings are dropped, and the parameters the user id had as an input field are removed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hrnn_core.config import ModelConfig, TrainConfig
from research.synth import synthetic_snapshot
from hrnn_core.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from hrnn_core.model.features import USER_ID_FIELD, FeatureSpace
from hrnn_core.model.network import HRNNMeta

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODEL = ModelConfig(hidden_size=16, field_dim=8, input_size=16, dropout=0.0)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, HRNNMeta, FeatureSpace]:
    d = tmp_path_factory.mktemp("checkpoint")
    snap = synthetic_snapshot(d / "data", n_users=30, n_items=40, n_events=900, n_genres=4, seed=5)
    fs = FeatureSpace.fit(snap, MODEL)
    torch.manual_seed(0)
    model = HRNNMeta(MODEL, fs, *fs.item_table(snap)).eval()
    with torch.no_grad():
        model.user_out.weight[1:].normal_()  # as if trained
    path = save_checkpoint(d / "model.pt", model, fs, TrainConfig(), torch.ones(fs.n_items, dtype=torch.long))
    return path, model, fs


def _as_written_before(raw: dict, fs: FeatureSpace, **model_fields) -> dict:
    """``raw`` in the layout of the code before issue 17: the retired settings at their shipped values,
    and the user id's input parameters (never trained while the id was an output vector): its rows of
    the user bags (the group's last tokens) and its block of the user MLP's and the initial state's
    inputs (after the other categorical fields, before the numeric ones)."""
    d = MODEL.field_dim
    old = dict(raw)
    old["model_config"] = {**raw["model_config"], "user_id_output": True, "user_id_dropout": 0.0,
                           "trend_train": None, "trend_auto": False, **model_fields}
    old["train_config"] = {**raw["train_config"], "exclude_seen": None, "shuffle_ties": True,
                           "logq_correction": "inclusion"}
    state = dict(raw["model_state"])
    state["user_bags.weight"] = torch.cat([state["user_bags.weight"], torch.randn(len(fs.users.vocabs[-1]), d)])
    at = (len(fs.users.cat_fields) - 1) * d
    for key in ("fields.user.0.weight", "init_proj.weight"):
        w = state[key]
        state[key] = torch.cat([w[:, :at], torch.randn(w.shape[0], d), w[:, at:]], dim=1)
    old["model_state"] = state
    return old


def test_a_checkpoint_written_before_loads_as_the_same_model(saved, tmp_path) -> None:
    path, model, fs = saved
    assert fs.users.cat_fields[-1] == USER_ID_FIELD and len(fs.users.cat_fields) > 1
    raw = torch.load(path, weights_only=True)
    torch.save(_as_written_before(raw, fs), tmp_path / "old.pt")
    ck = load_checkpoint(tmp_path / "old.pt")
    assert ck.model_config == MODEL and ck.train_config == TrainConfig()
    state = ck.model.state_dict()
    assert set(state) == set(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(state[key], value), key


def test_a_checkpoint_reading_the_id_as_an_input_field_is_refused_by_name(saved, tmp_path) -> None:
    path, _, fs = saved
    raw = torch.load(path, weights_only=True)
    torch.save(_as_written_before(raw, fs, user_id_output=False), tmp_path / "input.pt")
    with pytest.raises(CheckpointError, match="user_id_output = false"):
        load_checkpoint(tmp_path / "input.pt")


def test_a_checkpoint_of_the_step_path_loads_into_the_fused_gru_with_the_same_states(saved, tmp_path) -> None:
    """Models registered before the window path kept one ``GRUCell`` per layer (``cells.{i}.weight_ih``, ...);
    they load into the fused ``nn.GRU`` and a GRUCell stepped over a sequence gives the states it gives."""
    path, model, fs = saved
    raw = torch.load(path, weights_only=True)
    old = dict(raw)
    old["model_state"] = {(f"cells.{k[-1]}.{k[len('gru.'):-len('_l0')]}" if k.startswith("gru.") else k): v
                          for k, v in raw["model_state"].items()}
    assert "cells.0.weight_hh" in old["model_state"] and not any(k.startswith("gru.") for k in old["model_state"])
    torch.save(old, tmp_path / "cells.pt")
    loaded = load_checkpoint(tmp_path / "cells.pt").model
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    cell = torch.nn.GRUCell(MODEL.input_size, MODEL.hidden_size)
    cell.load_state_dict({k.split(".")[-1]: v for k, v in old["model_state"].items() if k.startswith("cells.0.")})
    x, start = torch.randn(3, 7, MODEL.input_size), torch.randn(3, MODEL.hidden_size)
    h, steps = start, []
    with torch.no_grad():
        for k in range(7):
            h = cell(x[:, k], h)
            steps.append(h)
        fused, last = loaded.gru(x, start[None])
    torch.testing.assert_close(fused, torch.stack(steps, dim=1), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(last[0], steps[-1], atol=1e-6, rtol=1e-5)
