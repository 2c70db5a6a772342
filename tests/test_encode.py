"""Encoding events from tables (``features.encode_tables``; ``encode_events`` reads a snapshot folder into
it) and the one gather of step inputs (``steps.gather_steps``) that training and the evaluation scorer use."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from hrnn_core.config import ModelConfig, TrainConfig
from research.synth import synthetic_snapshot
from hrnn_core.model.features import FeatureSpace, encode_events, encode_tables
from hrnn_core.model.network import StepInputs
from hrnn_core.model.steps import gather_steps
from hrnn_core.train.trainer import gather_inputs, owner_windows, prepare_data

MODEL = ModelConfig(hidden_size=16, field_dim=8, input_size=16)


@pytest.fixture(scope="module")
def snap(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_snapshot(tmp_path_factory.mktemp("encode") / "data", n_users=30, n_items=40, n_events=900,
                              n_genres=4, seed=7)


def assert_same(a, b) -> None:
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, torch.Tensor):
            assert x.dtype == y.dtype and torch.equal(x, y), f.name
        else:
            np.testing.assert_array_equal(x, y, err_msg=f.name)


def test_the_folder_reader_encodes_what_the_tables_encode(snap) -> None:
    fs = FeatureSpace.fit(snap, MODEL)
    seq, users = pq.read_table(snap / "sequences.parquet"), pq.read_table(snap / "users.parquet")
    freq = pq.read_table(snap / "item_frequency.parquet")
    counts = np.zeros(fs.n_items, dtype=np.int64)
    counts[freq["item_idx"].to_numpy()] = freq["events"].to_numpy()
    from_folder = encode_events(snap, fs, 5)
    assert_same(from_folder, encode_tables(seq, users, fs, 5, counts))
    assert from_folder.item_freq.sum() == len(from_folder.target)
    assert not encode_tables(seq, users, fs, 5).item_freq.any()  # no counts given: zeros


def test_owners_without_events_encode_as_empty_rows(snap) -> None:
    """A histories table cut at a horizon keeps every owner's row, some with no events (the last one too)."""
    fs = FeatureSpace.fit(snap, MODEL)
    seq, users = pq.read_table(snap / "sequences.parquet"), pq.read_table(snap / "users.parquet")
    whole = encode_tables(seq, users, fs, 5)
    empty = seq.slice(0, 1).to_pylist()[0]
    empty = {k: ([] if isinstance(v, list) else (0 if k == "n_events" else v)) for k, v in empty.items()}
    cut = pa.concat_tables([seq.slice(0, 2), pa.Table.from_pylist([empty], schema=seq.schema), seq.slice(2),
                            pa.Table.from_pylist([empty], schema=seq.schema)])
    enc = encode_tables(cut, users, fs, 5)
    assert len(enc.target) == len(whole.target) and torch.equal(enc.prev_item, whole.prev_item)
    assert np.diff(enc.owner_start)[[2, -1]].tolist() == [0, 0]


def test_gather_steps_is_the_trainers_gather(snap) -> None:
    """The trainer gathers with gather_steps; checked here against the field-by-field gather it replaced."""
    data = prepare_data(snap, MODEL, TrainConfig(val_owners=5, progress=False))
    padded = False
    for w in owner_windows(data.train_segments, batch_size=7, bptt=6):
        padded |= bool((w.idx < 0).any())
        idx_t = torch.from_numpy(w.idx)
        ev, safe = data.events, idx_t.clamp(min=0)
        user = data.event_user[safe[:, :1]].expand_as(safe)  # one owner per row
        assert (data.event_user[safe][idx_t >= 0] == user[idx_t >= 0]).all()
        expected = StepInputs(prev_item=ev.prev_item[safe], prev_type=ev.prev_type[safe],
                              prev_value=ev.prev_value[safe], time_bucket=ev.time_bucket[safe],
                              context=ev.context[safe], user_cat=ev.user_cat[user], user_num=ev.user_num[user],
                              reset=torch.from_numpy(w.reset), lengths=torch.from_numpy(w.lengths))
        assert_same(gather_inputs(data, w), expected)
    assert padded  # rows that end inside a window are padded after their end

    rows = np.array([0, 3, 4])  # one user per row: the same as that user at every step
    ev = data.events
    flat = np.minimum(ev.owner_start[rows][:, None] + np.arange(4)[None, :], len(ev.target) - 1)
    per_row = gather_steps(ev, flat, ev.owner_user[rows])
    assert_same(per_row, gather_steps(ev, flat, np.repeat(ev.owner_user[rows][:, None], 4, axis=1)))
    assert not per_row.reset.any()


def test_a_huge_event_value_is_clipped_like_every_numeric_field(snap) -> None:
    """An event value far outside the training range (ingest accepts any finite number) must not make the
    standardized input, and so every score, overflow: it is clipped to model.numeric_clip."""
    fs = FeatureSpace.fit(snap, MODEL)
    assert fs.event_value(1e39) == (MODEL.numeric_clip, 1.0) and fs.event_value(-1e300) == (-MODEL.numeric_clip, 1.0)
    assert fs.event_value(None) == (0.0, 0.0)
    enc = encode_events(snap, fs, 5)
    assert float(enc.prev_value[:, 0].abs().max()) <= MODEL.numeric_clip
