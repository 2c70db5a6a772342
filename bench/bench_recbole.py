"""Benchmark: HRNN-meta's training events/s beside RecBole's GRU4Rec, the peer a user would pick (issue 18).

Usage:
    python bench/bench_recbole.py --snapshot DATA_DIR/snapshots/ID [--hidden 64] [--venv /tmp/hrnn-recbole-venv]
        [--out bench/results/recbole.json]

    (an ml-100k snapshot: ``HRNN_DATA_DIR=DIR hrnn datasets fetch ml-100k && hrnn ingest --dataset ml-100k &&
    hrnn transform && hrnn snapshot``)

1. A throwaway virtualenv under /tmp (never the project's .venv; reused while its install spec is unchanged):
   ``recbole==1.2.1`` installed ``--no-deps``, then its requirements except ``ray`` (used only by RecBole's
   hyper-parameter tuning; its ``<=2.6.3`` pin would pull a large wheel), with ``numpy<2``, ``scipy<1.13`` and
   ``pandas<2.2`` for RecBole 1.2.1's older APIs, and the project's own torch version (pip installs it into the
   throwaway venv: here the CPU wheel from the machine's local wheel folder, elsewhere PyPI's build).
2. RecBole: GRU4Rec on the ml-100k that ships in its wheel (``recbole/dataset_example/ml-100k``), hidden and
   embedding size ``--hidden``, CE loss (its default for GRU4Rec, full softmax), its default batch size (2048)
   and sequence length (50), one thread (``torch.set_num_threads(1)``, ``OMP_NUM_THREADS=1``). One epoch of
   ``Trainer._train_epoch`` is timed (dataset building and evaluation excluded). Its events are its training
   samples: one per training interaction with a history (the target of a prefix of up to 50 items).
3. HRNN-meta, in the same run: ``hrnn_core.train.trainer.train`` of this checkout on the snapshot (the same
   ml-100k, fetched from the same wheel), default ModelConfig with ``hidden_size = --hidden``, one epoch,
   ``train.threads = 1``; its events/s is the trainer's own for that epoch (validation excluded).

Reported: both events/s and the ratio HRNN-meta / RecBole (issue 18's target: >= 20x), with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECBOLE = "recbole==1.2.1"
# RecBole 1.2.1's requirements without ray (tuning only); numpy/scipy/pandas held at versions with the APIs it uses
RECBOLE_DEPS = ["numpy<2", "scipy<1.13", "pandas<2.2", "tqdm", "colorlog==4.7.2", "colorama==0.4.4", "scikit-learn",
                "pyyaml", "tensorboard", "thop", "tabulate", "plotly", "texttable", "psutil"]

RECBOLE_CHILD = r"""
import json, os, sys, tempfile, time
import torch
torch.set_num_threads(1)
import recbole
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.utils import get_model, get_trainer, init_seed
hidden = int(os.environ["BENCH_HIDDEN"])
cfg = Config(model="GRU4Rec", dataset="ml-100k", config_dict={
    "data_path": os.path.join(os.path.dirname(recbole.__file__), "dataset_example"),
    "checkpoint_dir": tempfile.mkdtemp(), "use_gpu": False, "device": "cpu", "epochs": 1,
    "hidden_size": hidden, "embedding_size": hidden, "train_neg_sample_args": None, "loss_type": "CE",
    "show_progress": False, "state": "ERROR", "worker": 0, "save_dataset": False, "save_dataloaders": False,
    "reproducibility": True, "seed": 0})
init_seed(cfg["seed"], cfg["reproducibility"])
dataset = create_dataset(cfg)
train_data, _, _ = data_preparation(cfg, dataset)
model = get_model(cfg["model"])(cfg, train_data._dataset).to(cfg["device"])
trainer = get_trainer(cfg["MODEL_TYPE"], cfg["model"])(cfg, model)
torch.set_num_threads(1)
t = time.perf_counter()
loss = trainer._train_epoch(train_data, 0, show_progress=False)
seconds = time.perf_counter() - t
n = len(train_data.dataset)
print(json.dumps({"events": n, "seconds": round(seconds, 2), "events_per_s": round(n / seconds, 1),
                  "threads": torch.get_num_threads(), "epoch_loss": float(loss), "recbole": recbole.__version__,
                  "torch": torch.__version__, "batch_size": cfg["train_batch_size"],
                  "max_seq_len": cfg["MAX_ITEM_LIST_LENGTH"], "n_items": dataset.item_num,
                  "n_users": dataset.user_num}))
"""

HRNN_CHILD = r"""
import json, sys, tempfile
from pathlib import Path
import torch
from hrnn_core.config import ModelConfig, TrainConfig
from hrnn_core.train.trainer import train
snap, hidden = Path(sys.argv[1]), int(sys.argv[2])
cfg = TrainConfig(epochs=1, min_epochs=0, val_owners=100, progress=False, device="cpu", threads=1)
model = ModelConfig(hidden_size=hidden)
with tempfile.TemporaryDirectory() as d:
    res = train(snap, Path(d) / "run", model, cfg)
    output = json.loads(res.report.read_text()).get("train_config", {}).get("output")
h = res.history[0]
print(json.dumps({"events": round(h["events_per_s"] * h["seconds"]), "seconds": round(h["seconds"], 2),
                  "events_per_s": round(h["events_per_s"], 1), "threads": torch.get_num_threads(),
                  "hidden_size": model.hidden_size, "output": output, "batch_size": cfg.batch_size, "bptt": cfg.bptt}))
"""


def torch_version() -> str:
    import torch  # noqa: PLC0415

    return torch.__version__.split("+")[0]


def ensure_venv(venv: Path) -> Path:
    """The throwaway venv with RecBole (reused while its install spec is the same); returns its python."""
    python = venv / "bin" / "python"
    spec = " ".join([RECBOLE, f"torch=={torch_version()}", *RECBOLE_DEPS])
    stamp = venv / ".hrnn-bench-spec"
    if stamp.exists() and stamp.read_text() == spec and python.exists():
        return python
    if venv.resolve() == (REPO / ".venv").resolve() or REPO.resolve() in venv.resolve().parents:
        raise SystemExit(f"--venv {venv}: must be a throwaway folder outside the project")
    print(f"creating {venv} ({spec})", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--no-deps", RECBOLE], check=True)
    subprocess.run([*pip, f"torch=={torch_version()}", *RECBOLE_DEPS], check=True)
    stamp.write_text(spec)
    return python


def run_json(cmd: list[str], env: dict, cwd: Path) -> dict:
    out = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--snapshot", type=Path, required=True, help="an ml-100k snapshot folder (see the module docstring)")
    ap.add_argument("--hidden", type=int, default=64, help="hidden (and embedding) size of both models")
    ap.add_argument("--venv", type=Path, default=Path(tempfile.gettempdir()) / "hrnn-recbole-venv",
                    help="the throwaway virtualenv for RecBole (created when missing or stale)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "recbole.json")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda sig, _: sys.exit(128 + sig))  # stopped: children killed, no burner left
    if not (args.snapshot / "manifest.json").exists():
        ap.error(f"--snapshot {args.snapshot}: not a snapshot folder (no manifest.json); see the module docstring")
    if args.hidden < 1:
        ap.error("--hidden must be >= 1")

    python = ensure_venv(args.venv)
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    one_thread = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory(prefix="hrnn-bench-recbole-") as work:  # RecBole writes log/ into its cwd
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        recbole = run_json([str(python), "-c", RECBOLE_CHILD], {**env, **one_thread, "BENCH_HIDDEN": str(args.hidden)},
                           Path(work))
        print(f"RecBole GRU4Rec: {recbole['events']:,} events in {recbole['seconds']:.1f} s = "
              f"{recbole['events_per_s']:,.0f} events/s", flush=True)
        hrnn_env = {**os.environ, **one_thread, "PYTHONPATH": str(REPO)}
        hrnn = run_json([sys.executable, "-c", HRNN_CHILD, str(args.snapshot), str(args.hidden)], hrnn_env, Path(work))
        print(f"HRNN-meta:       {hrnn['events']:,} events in {hrnn['seconds']:.1f} s = "
              f"{hrnn['events_per_s']:,.0f} events/s", flush=True)
    ratio = hrnn["events_per_s"] / recbole["events_per_s"]
    report = {
        "benchmark": "training events/s on ml-100k, one thread: HRNN-meta vs RecBole 1.2.1's GRU4Rec (issue 18)",
        "command": "python bench/bench_recbole.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
                    "cpu": platform.processor() or platform.machine(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "load_avg_at_start": load_at_start,
        "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
        "venv": {"path": str(args.venv), "install": [RECBOLE + " (--no-deps)", f"torch=={torch_version()}", *RECBOLE_DEPS],
                 "torch": "installed into the throwaway venv (the same version as the project's)"},
        "hidden_size": args.hidden,
        "recbole_gru4rec": recbole,
        "hrnn_meta": {**hrnn, "snapshot": str(args.snapshot)},
        "hrnn_over_recbole_events_per_s": round(ratio, 2),
        "target": 20,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"HRNN-meta / RecBole GRU4Rec: {ratio:.2f}x (target >= 20x); load average at start {load_at_start}; "
          f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
