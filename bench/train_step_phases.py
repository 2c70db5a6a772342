"""Where a training step's time goes (issue 18): input gathering, input encoding (field MLPs, embeddings), the
rest of the forward pass (GRU, decoder, softmax loss), backward, and the optimizer, over the first 60 windows of
an epoch of ``hrnn_core.train.trainer`` on a snapshot, one thread, dense softmax.

    .venv/bin/python bench/train_step_phases.py --snapshot SNAPSHOT_DIR [--hidden 64]

Prints events/s of the timed loop and the mean milliseconds per step of each phase (wall clock: on a shared
machine the absolute values scale with the load, the shares much less).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from hrnn_core.config import ModelConfig, TrainConfig
from hrnn_core.train import trainer as T
from hrnn_core.train.batches import gather_inputs, owner_windows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--snapshot", type=Path, required=True)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = TrainConfig(output="dense", epochs=1, threads=1, progress=False)
    run = T._prepare(args.snapshot, ModelConfig(hidden_size=args.hidden, input_size=args.hidden), cfg,
                     torch.device("cpu"), None)
    segments, data, _ = T._epoch_streams(run, 0)
    model, params = run.model, list(run.model.parameters())
    model.train()
    acc = dict.fromkeys(("gather", "encode", "forward_rest", "backward", "optimizer"), 0.0)
    encode = model.encode_inputs

    def timed_encode(x):
        t = time.perf_counter()
        out = encode(x)
        acc["encode"] += time.perf_counter() - t
        return out

    model.encode_inputs = timed_encode
    prev = hidden = seen = None
    events = steps = 0
    for steps, w in enumerate(owner_windows(segments, cfg.batch_size, cfg.bptt), start=1):
        t0 = time.perf_counter()
        hidden, seen = T._carry(prev, w, hidden, seen)
        prev, idx, x = w, torch.from_numpy(w.idx), gather_inputs(data, w)
        t1 = time.perf_counter()
        before = acc["encode"]
        res, hidden, seen = T._step_loss(run, data, idx, x, 0.5, hidden, seen)
        t2 = time.perf_counter()
        for opt in run.opts:
            opt.zero_grad(set_to_none=True)
        res.loss.backward()
        t3 = time.perf_counter()
        T._clip_grad_norm(params, cfg.grad_clip)
        for opt in run.opts:
            opt.step()
        t4 = time.perf_counter()
        acc["gather"] += t1 - t0
        acc["forward_rest"] += (t2 - t1) - (acc["encode"] - before)
        acc["backward"] += t3 - t2
        acc["optimizer"] += t4 - t3
        events += int((idx >= 0).sum())
        if steps == args.steps:
            break
    total = sum(acc.values())
    print(f"H={args.hidden}: {events / total:,.0f} events/s over {steps} steps; per step: "
          + ", ".join(f"{k} {v / steps * 1e3:.1f} ms ({v / total:.0%})" for k, v in acc.items()))


if __name__ == "__main__":
    main()
