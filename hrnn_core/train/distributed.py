"""Distributed data-parallel training of HRNN-meta on ``torch.distributed`` (launched by torchrun).

How one step is split over ``W`` processes (gloo on CPU, nccl on GPUs):

- every rank builds the same global windows (same seed and epoch) and keeps the rows whose slot id
  is its rank modulo W, so owners (users) are sharded across ranks and each slot's hidden
  state lives on exactly one rank; the union of the ranks' batches is the single-process batch;
- each rank back-propagates the *sum* of its events' weighted losses; the gradients and the
  step's counts are summed over ranks in one all-reduce (sparse item-table gradients of the
  sampled softmax are all-gathered) and divided by the global event count, which is exactly the
  single-process gradient of the batch mean;
- the importance sampler's negatives are drawn per rank from the same q (its own generator
  stream), dropout masks per rank too; lambda of eq. (2) is the same on every rank;
- rank 0 validates, writes checkpoints and the report; the metrics are broadcast so every rank
  takes the same early-stopping decision.

``python -m hrnn_core.train.distributed SPEC.json`` is the per-process entry point torchrun starts;
:func:`train_distributed` launches it on this machine (``train.processes`` > 1). On a cluster run
``torchrun --nnodes ... -m hrnn_core.train.distributed SPEC.json`` with the same spec on every node.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from hrnn_core.errors import HrnnError
from hrnn_core.procs import run_group
from hrnn_core.threads import choose_threads


class DistributedError(HrnnError):
    """The distributed run could not start or one of its processes failed."""


@dataclass(frozen=True)
class DistContext:
    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def local_rows(self, slot: np.ndarray) -> np.ndarray:
        """This rank's rows of a global window: those whose slot id is ``rank`` modulo the world (an
        owner keeps its slot id, so it stays on one rank while its state is carried)."""
        return slot % self.world == self.rank

    def all_reduce_step(self, params: list[torch.nn.Parameter], sparse: set[int], stats: torch.Tensor) -> torch.Tensor:
        """Sum gradients and ``stats`` (whose first entry is the event count) over ranks.

        Gradients come in as gradients of per-rank loss *sums*; they leave as the gradient of the
        global mean (divided by the summed count). Returns the summed ``stats``.
        """
        dense = [p for p in params if id(p) not in sparse]
        # which parameters got a gradient on some rank: one with none anywhere stays None, as in a
        # single process (the optimizer then skips it: no momentum or weight-decay step)
        has = torch.tensor([float(p.grad is not None) for p in dense], device=self.device)
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in dense]
                         + [has, stats.to(self.device, torch.float32)])
        dist.all_reduce(flat)
        total = flat[-len(stats):].clone()
        has = flat[-len(stats) - len(dense):-len(stats)]
        scale = 1.0 / max(float(total[0]), 1.0)
        offset = 0
        for i, p in enumerate(dense):
            n = p.numel()
            p.grad = flat[offset:offset + n].view_as(p).mul_(scale) if float(has[i]) > 0 else None
            offset += n
        for p in params:
            if id(p) in sparse:
                p.grad = self._all_gather_sparse(p).mul_(scale)
        return total

    def _all_gather_sparse(self, p: torch.nn.Parameter) -> torch.Tensor:
        """Concatenate every rank's sparse row gradient of ``p`` (rows, values) and coalesce."""
        g = p.grad.coalesce() if p.grad is not None else None
        rows = g.indices()[0] if g is not None else torch.zeros(0, dtype=torch.long, device=self.device)
        vals = g.values() if g is not None else torch.zeros((0, *p.shape[1:]), dtype=p.dtype, device=self.device)
        size = torch.tensor([rows.numel()], device=self.device)
        sizes = [torch.zeros_like(size) for _ in range(self.world)]
        dist.all_gather(sizes, size)
        most = int(max(int(s) for s in sizes))
        pad_rows = torch.zeros(most, dtype=torch.long, device=self.device)
        pad_vals = torch.zeros((most, *p.shape[1:]), dtype=p.dtype, device=self.device)
        pad_rows[:rows.numel()], pad_vals[:rows.numel()] = rows, vals
        all_rows = [torch.empty_like(pad_rows) for _ in range(self.world)]
        all_vals = [torch.empty_like(pad_vals) for _ in range(self.world)]
        dist.all_gather(all_rows, pad_rows)
        dist.all_gather(all_vals, pad_vals)
        keep_rows = torch.cat([r[:int(s)] for r, s in zip(all_rows, sizes, strict=True)])
        keep_vals = torch.cat([v[:int(s)] for v, s in zip(all_vals, sizes, strict=True)])
        return torch.sparse_coo_tensor(keep_rows[None, :], keep_vals, p.shape).coalesce()

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank."""
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def init_from_env(device: str = "auto") -> DistContext:
    """Join the process group torchrun set up (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_* in the env)."""
    from hrnn_core.model.checkpoint import resolve_device  # noqa: PLC0415

    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise DistributedError(f"not started by torchrun ({', '.join(missing)} unset); launch with "
                               f"`torchrun --nproc-per-node N -m hrnn_core.train.distributed SPEC.json`")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    target = resolve_device(device)
    if target.type == "cuda":
        target = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(target)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if target.type == "cuda" else "gloo", timeout=timedelta(minutes=30))
    return DistContext(rank=rank, world=world, device=target)


def write_spec(path: Path, snapshot_dir: Path, run_dir: Path, model_cfg, train_cfg, resume: bool = False) -> Path:
    """The JSON job description every process of a distributed run reads."""
    spec = {"snapshot_dir": str(snapshot_dir), "run_dir": str(run_dir), "resume": resume,
            "model": dataclasses.asdict(model_cfg), "train": dataclasses.asdict(train_cfg)}
    path = Path(path)
    path.write_text(json.dumps(spec, indent=2))
    return path


def train_distributed(snapshot_dir: Path, run_dir: Path, model_cfg, train_cfg, resume: bool = False,
                      processes: int | None = None, log: Path | None = None):
    """Train with ``processes`` (default ``train_cfg.processes``) local ranks via torchrun.

    Returns the :class:`hrnn_core.train.trainer.TrainResult` read back from rank 0's run folder.
    """
    from hrnn_core.train.trainer import TrainError, TrainResult  # noqa: PLC0415

    n = processes or train_cfg.processes
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if (run_dir / "last.pt").exists() and not resume:
        raise TrainError(f"{run_dir} already holds a run; pass resume=True (--resume) or use another run dir")
    # each rank's torch threads: the explicit train.threads, else the automatic policy sharing the free cores
    # among the n ranks (a rank's own automatic choice would not know about the others)
    per_rank = choose_threads(train_cfg.threads, share=n)
    train_cfg = dataclasses.replace(train_cfg, threads=per_rank)
    spec = write_spec(run_dir / "ddp_spec.json", snapshot_dir, run_dir, model_cfg, train_cfg, resume)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
           "-m", "hrnn_core.train.distributed", str(spec)]
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(per_rank)
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # one machine: keep gloo's traffic on loopback
    log = Path(log) if log else run_dir / "ddp.log"
    with log.open("w") as out:
        proc = run_group(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)  # stops with this process
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise DistributedError(f"distributed training ({n} processes) failed with exit code {proc.returncode}; "
                               f"log {log}:\n{tail}")
    report = json.loads((run_dir / "report.json").read_text())
    return TrainResult(run_dir, run_dir / "best.pt", run_dir / "last.pt", run_dir / "report.json",
                       report["epochs"], report["stopped_early"])


def main(argv: list[str] | None = None) -> int:
    from hrnn_core.config import ModelConfig, TrainConfig  # noqa: PLC0415
    from hrnn_core.train.trainer import train  # noqa: PLC0415

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: torchrun --nproc-per-node N -m hrnn_core.train.distributed SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(args[0]).read_text())
    model_cfg = ModelConfig(**spec["model"])
    train_cfg = TrainConfig(**spec["train"])
    ctx = init_from_env(train_cfg.device)
    try:
        if not ctx.is_main:
            train_cfg = dataclasses.replace(train_cfg, progress=False)
        train(Path(spec["snapshot_dir"]), Path(spec["run_dir"]), model_cfg, train_cfg,
              resume=bool(spec.get("resume")), dist_ctx=ctx)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
