"""A tiny registered champion for the tests that serve or export one (test_export, test_service)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from hrnn_core import registry
from hrnn_core.config import Config, ModelConfig, TrainConfig, load_config
from hrnn_core.train.trainer import train
from research.synth import synthetic_snapshot
from hrnn_core.data.warehouse import connect

# trend_weight 0: the tests compare the service and the export with the engine alone (eq. 2); the
# trend term of the default model (eq. 5) is checked on its own (test_service.test_trend_window_*)
TINY_MODEL = ModelConfig(hidden_size=16, field_dim=8, input_size=16, trend_weight=0.0)
ONE_EPOCH = TrainConfig(epochs=1, batch_size=8, bptt=8, progress=False, val_owners=5, threads=1)

LATEST_ON_TOP = 1.5  # the latest item's prior set with a hand-set repeat term (scoring.choose_latest_prior)


@dataclass
class Champion:
    cfg: Config  # data_dir = root / "data" (warehouse with the registry)
    tag: str  # the promoted BentoML tag (callers delete it when done: the test store is shared)
    snap: Path  # the synthetic snapshot it was trained on
    artifact: Path  # folder holding model.pt
    repeat_log_prior: float | None = None  # the repeat term set by hand (None: as trained), the latest item +LATEST_ON_TOP


def promote_tiny_champion(root: Path, *, n_users: int, n_items: int, n_events: int, seed: int,
                          metrics: dict | None = None, model: ModelConfig = TINY_MODEL,
                          repeat_log_prior: float | None = None, **synth_options) -> Champion:
    """Train a tiny HRNN-meta for one epoch on a synthetic snapshot, register it and promote it
    (``synth_options``: more ``SynthConfig`` fields, e.g. ``cold_items_fraction`` for items created late)."""
    snap = synthetic_snapshot(root / "data", n_users=n_users, n_items=n_items, n_events=n_events, n_genres=5,
                              seed=seed, **synth_options)
    run = train(snap, root / "run", model, ONE_EPOCH)
    art = root / "artifact"
    art.mkdir()
    shutil.copy(run.last_checkpoint, art / "model.pt")
    if repeat_log_prior is not None:  # the repeat term set by hand (a tiny fit's calibrated one may be ~0)
        raw = torch.load(art / "model.pt", map_location="cpu", weights_only=True)
        raw["model_state"]["repeat_log_prior"] = torch.tensor(float(repeat_log_prior))
        raw["model_state"]["latest_log_prior"] = torch.tensor(LATEST_ON_TOP)
        torch.save(raw, art / "model.pt")
    cfg = load_config(overrides={"paths": {"data_dir": str(root / "data")}}, environ={})
    as_of = json.loads((snap / "manifest.json").read_text())["as_of"]
    with connect(cfg) as con:
        tag = registry.register(con, "hrnn", art, metrics=metrics, snapshot_id=snap.name, data_interval=(1.7e9, as_of))
        registry.promote(con, tag)
    return Champion(cfg, tag, snap, art, repeat_log_prior)
