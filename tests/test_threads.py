"""The torch thread policy (hrnn_core.threads): explicit settings win; the automatic count keeps one core free
for a neighbour, leaves the cores others keep busy alone, shares what is left, is capped, and is what training,
the retrain tasks, the export, torchrun ranks and the service apply. The slowdown it prevents is measured by
bench/bench_busy.py (docs/benchmarks.md)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from hrnn_core import threads
from hrnn_core.config import ConfigError, ModelConfig, ServeConfig, TrainConfig


@pytest.fixture()
def machine(monkeypatch: pytest.MonkeyPatch):
    """``machine(cores, load)`` fakes the CPU affinity and the 1-minute load average; torch's count is restored."""
    before = torch.get_num_threads()

    def fake(cores: int, load: float) -> None:
        monkeypatch.setattr(threads.os, "sched_getaffinity", lambda _pid: set(range(cores)), raising=False)
        monkeypatch.setattr(threads.os, "getloadavg", lambda: (load, load, load))
        threads.auto_threads.cache_clear()

    yield fake
    threads.auto_threads.cache_clear()
    torch.set_num_threads(before)


@pytest.mark.parametrize(("cores", "load", "share", "expected"), [
    (2, 0.0, 1, 1),    # small idle machine: one core kept for a neighbour
    (2, 1.2, 1, 1),    # one busy neighbour: never below one thread
    (2, 5.0, 1, 1),
    (4, 0.1, 1, 3),
    (16, 0.0, 1, threads.MAX_AUTO_THREADS),  # big idle machine: capped
    (16, 9.6, 1, 5),   # 16 - 1 kept - 10 busy
    (16, 0.0, 4, 3),   # 15 free cores shared by 4 request threads / ranks
    (16, 0.0, 32, 1),
])
def test_auto_threads(machine, cores: int, load: float, share: int, expected: int) -> None:
    machine(cores, load)
    assert threads.usable_cores() == cores
    assert threads.choose_threads(0, share=share) == expected


def test_an_explicit_setting_wins(machine) -> None:
    machine(2, 5.0)
    assert threads.choose_threads(3) == 3
    assert threads.apply_torch_threads(3) == 3 and torch.get_num_threads() == 3


def test_the_automatic_choice_is_made_once_per_process(machine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The process's own load must not shrink its next choice (the demo runs every retrain task in one process)."""
    machine(16, 0.0)
    assert threads.apply_torch_threads() == threads.MAX_AUTO_THREADS
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (8.0, 8.0, 8.0))  # our own 8 threads, a minute later
    assert threads.apply_torch_threads() == threads.MAX_AUTO_THREADS == torch.get_num_threads()


def test_training_applies_the_policy(machine, tmp_path: Path) -> None:
    from research.synth import synthetic_snapshot
    from hrnn_core.train.trainer import train

    snap = synthetic_snapshot(tmp_path / "data", n_users=20, n_items=30, n_events=400, seed=0)
    machine(4, 1.0)  # 4 cores, one busy: 4 - 1 kept - 1 busy
    torch.set_num_threads(1)
    cfg = TrainConfig(epochs=1, batch_size=4, bptt=8, progress=False, val_owners=0, warmup_steps=1, device="cpu")
    train(snap, tmp_path / "run", ModelConfig(hidden_size=8, field_dim=4, input_size=8), cfg)
    assert torch.get_num_threads() == 2
    train(snap, tmp_path / "run2", ModelConfig(hidden_size=8, field_dim=4, input_size=8),
          TrainConfig(**{**cfg.__dict__, "threads": 1}))
    assert torch.get_num_threads() == 1  # train.threads > 0 wins


def test_the_retrain_tasks_and_the_export_apply_the_policy(machine) -> None:
    from hrnn_core import retrain
    from hrnn_core.config import load_config

    machine(4, 0.0)
    torch.set_num_threads(1)
    retrain._apply_threads(load_config(environ={}))
    assert torch.get_num_threads() == 3
    retrain._apply_threads(load_config(overrides={"train": {"threads": 1}}, environ={}))
    assert torch.get_num_threads() == 1


def test_the_service_applies_the_policy_in_each_request_thread(machine) -> None:
    """serve.torch_threads = 0 (the default): the free cores shared by serve.threads request threads."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("hrnn_bento_service", Path(__file__).resolve().parents[1] / "bento" / "service.py")
    service = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, service)  # pydantic resolves the models' annotations through it
    spec.loader.exec_module(service)
    machine(16, 2.0)  # 16 - 1 kept - 2 busy = 13 free, 4 request threads: 3 each
    seen: list[int] = []

    def request() -> None:
        service._torch_threads(ServeConfig())
        seen.append(torch.get_num_threads())

    t = threading.Thread(target=request)
    t.start()
    t.join()
    assert seen == [3]
    assert ServeConfig().torch_threads == 0 and TrainConfig().threads == 0
    with pytest.raises(ConfigError, match="torch_threads"):
        ServeConfig(torch_threads=-1)
